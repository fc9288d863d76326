"""The picture-viewing task: caption pools per category and event schedules.

Each event is one natural picture shown for a few seconds; its ``caption`` describes the
picture in one sentence, and its ``trial_type`` is the picture's category.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Task label of the picture-viewing runs (``task-images``).
TASK = "images"
TASK_DESCRIPTION = ("Passive viewing of natural pictures of faces, places, animals, tools, "
                    "vehicles and food, one at a time, separated by a fixation cross. Each "
                    "event's caption describes its picture.")
INSTRUCTIONS = "Look at each picture and keep your eyes on the centre of the screen."

#: Distinct captions per category (no caption appears twice in the pool).
CAPTIONS: dict[str, tuple[str, ...]] = {
    "faces": (
        "A smiling woman with curly red hair looks straight at the camera.",
        "An old man with a white beard frowns in the afternoon light.",
        "A young boy laughs with his eyes closed.",
        "A woman in glasses gives a polite, tired smile.",
        "A bald man looks surprised, his eyebrows raised high.",
        "A teenage girl with freckles stares thoughtfully to the side.",
        "A grandmother with deep wrinkles smiles warmly.",
        "A man with a thick moustache squints into the sun.",
        "A toddler with chubby cheeks looks up curiously.",
        "A woman with dark braids has a calm, serious expression.",
        "A middle-aged man grins, showing a gap between his teeth.",
        "A close-up of a young woman's face, half in shadow.",
        "A boy with a scraped nose pulls a funny face.",
        "A man with grey stubble looks worried.",
        "A woman laughs loudly with her head tilted back.",
        "An elderly woman with silver hair gazes out of a window.",
        "A young man with a nose ring smirks at the camera.",
        "A crying baby with a red face and wide open mouth.",
        "A firefighter's face covered in soot, eyes bright.",
        "Twin sisters with identical smiles look into the lens.",
    ),
    "places": (
        "A quiet beach at dawn with gentle waves on the sand.",
        "A narrow cobblestone street lined with old houses.",
        "A snowy mountain valley under a clear blue sky.",
        "An empty subway platform lit by flickering lights.",
        "A busy open-air market full of colourful stalls.",
        "A wooden cabin beside a still lake in the forest.",
        "A long library hall with tall shelves of books.",
        "A city skyline at night reflected in the river.",
        "A wheat field stretching to the horizon at sunset.",
        "A small kitchen with a checkered floor and a round table.",
        "A desert canyon with red rock walls.",
        "A crowded train station hall with a high glass roof.",
        "A foggy pine forest with a muddy trail.",
        "An empty classroom with rows of desks and a blackboard.",
        "A tropical lagoon surrounded by palm trees.",
        "A cathedral interior with stained glass windows.",
        "A parking garage with concrete pillars and dim lights.",
        "A rocky coastline with a lighthouse on a cliff.",
        "A cosy living room with a fireplace and a sofa.",
        "A rice terrace on a green hillside after rain.",
    ),
    "animals": (
        "A brown dog runs across a grassy field.",
        "A tabby cat sleeps curled up on a windowsill.",
        "A herd of zebras drinks at a muddy waterhole.",
        "An owl perches on a branch at night.",
        "A horse gallops along the edge of a lake.",
        "A small frog sits on a green lily pad.",
        "An elephant sprays water over its back.",
        "A red fox sniffs the snow in a forest clearing.",
        "A flock of sheep grazes on a hillside.",
        "A parrot with bright feathers cracks a nut.",
        "A lion rests in the shade of an acacia tree.",
        "A squirrel holds an acorn in its tiny paws.",
        "A dolphin leaps out of the blue sea.",
        "A cow stands in a field chewing grass.",
        "A monkey hangs from a branch by its tail.",
        "A turtle crawls slowly over the sand.",
        "A giraffe stretches to eat leaves from a tall tree.",
        "A puppy chews on a red ball.",
        "A bear catches a salmon in a rushing river.",
        "A hummingbird hovers beside a purple flower.",
    ),
    "tools": (
        "A claw hammer lies on a wooden workbench.",
        "A pair of scissors cuts through a sheet of paper.",
        "A red screwdriver next to a pile of screws.",
        "An adjustable wrench tightens a rusty bolt.",
        "A cordless drill with a long bit on a garage floor.",
        "A handsaw rests against a stack of planks.",
        "A pair of pliers grips a bent wire.",
        "A paintbrush with wet blue paint on its bristles.",
        "A tape measure stretched along a wall.",
        "A garden shovel stuck in a pile of dirt.",
        "A kitchen knife beside a wooden cutting board.",
        "A spirit level balanced on a shelf.",
        "A soldering iron next to a circuit board.",
        "An axe stuck in a chopping block.",
        "A rake leans against a fence covered in leaves.",
        "A stapler and a box of staples on a desk.",
        "A chisel and a mallet on a carpenter's table.",
        "A sewing needle threaded with red cotton.",
        "A ladder stands open in an empty room.",
        "A toolbox full of spanners and screwdrivers.",
    ),
    "vehicles": (
        "A red double-decker bus drives down a busy street.",
        "A small sailboat crosses a calm blue bay.",
        "A freight train rolls through the countryside.",
        "A motorcycle parked outside a roadside cafe.",
        "A yellow taxi waits at a traffic light.",
        "A passenger jet takes off from a runway.",
        "A bicycle leans against a brick wall.",
        "A fire engine with flashing lights speeds past.",
        "A tractor ploughs a muddy field.",
        "A vintage car with chrome bumpers gleams in the sun.",
        "A cargo ship loaded with containers leaves the harbour.",
        "A helicopter hovers above a snowy peak.",
        "A tram glides along tracks in an old town.",
        "A delivery van is parked on the pavement.",
        "A racing car speeds around a sharp bend.",
        "A rowing boat is tied to a wooden jetty.",
        "A school bus stops to pick up children.",
        "A hot air balloon floats over green hills.",
        "A police car is parked with its doors open.",
        "A scooter zips between cars in heavy traffic.",
    ),
    "food": (
        "A slice of pepperoni pizza with melted cheese.",
        "A bowl of ramen with a boiled egg and green onions.",
        "A stack of pancakes with syrup and blueberries.",
        "A fresh green salad with tomatoes and olives.",
        "A chocolate cake with a single candle on top.",
        "A plate of sushi rolls with soy sauce.",
        "A crusty loaf of bread on a wooden board.",
        "A bowl of ripe strawberries on a table.",
        "A cheeseburger with fries on a paper tray.",
        "A steaming cup of coffee next to a croissant.",
        "A pot of tomato soup simmering on the stove.",
        "A plate of spaghetti with meatballs.",
        "A basket of red and green apples.",
        "A grilled steak with roasted potatoes.",
        "A bowl of porridge topped with sliced banana.",
        "Tacos filled with beans, salsa and avocado.",
        "A glass of orange juice beside a boiled egg.",
        "A tray of cupcakes with pink icing.",
        "A wedge of cheese with grapes and crackers.",
        "A bowl of curry with rice and flatbread.",
    ),
}
CATEGORIES = tuple(CAPTIONS)
#: Shortest picture-task run (s) that holds at least one event with the default timing.
MIN_TASK_RUN = 30.0


@dataclass(frozen=True)
class EventTiming:
    """Timing of the picture events (seconds).

    Attributes
    ----------
    duration : float
        How long each picture is shown.
    first_onset : float
        Earliest onset (lets the signal settle after the run starts).
    gap : tuple of float
        Range of the uniformly drawn blank interval between one picture's offset and the next
        onset.
    tail : float
        Time left after the last picture, so its response is recorded.
    """

    duration: float = 3.0
    first_onset: float = 6.0
    gap: tuple[float, float] = (5.0, 10.0)
    tail: float = 14.0


def caption_pool() -> list[tuple[str, str]]:
    """All ``(category, caption)`` pairs, in a fixed order (category by category)."""
    return [(category, caption) for category, captions in CAPTIONS.items()
            for caption in captions]


def schedule_events(run_duration: float, rng: np.random.Generator,
                    timing: EventTiming = EventTiming(),
                    exclude: frozenset[str] = frozenset()) -> list[dict[str, object]]:
    """Draw the events of one run: jittered onsets, balanced categories, distinct captions.

    Categories come in shuffled rounds (each category once per round), so their counts differ
    by at most one. Captions are drawn without replacement within the run and avoid those in
    ``exclude`` (e.g. shown in the subject's earlier runs) while the pool allows it.

    Parameters
    ----------
    run_duration : float
        ``n_volumes * TR`` (s).
    rng : numpy.random.Generator
    timing : EventTiming
    exclude : frozenset of str
        Captions to avoid.

    Returns
    -------
    list of dict
        One dict per event with ``onset`` (s, rounded to 0.1 s), ``duration`` (s),
        ``trial_type`` and ``caption``, in time order; empty when no event fits the run.
    """
    onsets = []
    onset = timing.first_onset + rng.uniform(0.0, timing.gap[0] / 2)
    while onset + timing.duration + timing.tail <= run_duration:
        onsets.append(round(onset, 1))
        onset += timing.duration + rng.uniform(*timing.gap)
    if not onsets:
        return []
    rounds = -(-len(onsets) // len(CATEGORIES))
    order = np.concatenate([rng.permutation(len(CATEGORIES)) for _ in range(rounds)])
    used = set(exclude)
    events = []
    for onset, category_index in zip(onsets, order, strict=False):
        category = CATEGORIES[int(category_index)]
        fresh = [c for c in CAPTIONS[category] if c not in used]
        caption = str(rng.choice(fresh or CAPTIONS[category]))
        used.add(caption)
        events.append({"onset": onset, "duration": timing.duration, "trial_type": category,
                       "caption": caption})
    return events


@dataclass(frozen=True)
class BlockTiming:
    """Timing of a block design (seconds): blocks of same-category pictures and rest.

    Attributes
    ----------
    n_blocks : int
        Blocks in the run; categories come in shuffled rounds (each once per round).
    events_per_block : int
        Pictures per block, each shown ``duration`` s with ``interval`` s blank after it.
    duration, interval, rest, first_onset : float
        ``rest``: fixation between blocks.
    """

    n_blocks: int = 12
    events_per_block: int = 4
    duration: float = 3.0
    interval: float = 1.0
    rest: float = 12.0
    first_onset: float = 6.0

    def run_duration(self) -> float:
        """Shortest run (s) that holds every block and a rest period after the last."""
        block = self.events_per_block * (self.duration + self.interval)
        return self.first_onset + self.n_blocks * (block + self.rest)


def schedule_blocks(rng: np.random.Generator, timing: BlockTiming = BlockTiming(),
                    exclude: frozenset[str] = frozenset()) -> list[dict[str, object]]:
    """Draw the events of a block-design run (same fields as :func:`schedule_events`).

    Blocks show ``events_per_block`` distinct captions of one category; categories come in
    shuffled rounds, so with 12 blocks each of the 6 categories has 2 blocks.
    """
    rounds = -(-timing.n_blocks // len(CATEGORIES))
    order = np.concatenate([rng.permutation(len(CATEGORIES)) for _ in range(rounds)])
    used = set(exclude)
    events = []
    onset = timing.first_onset
    for category_index in order[:timing.n_blocks]:
        category = CATEGORIES[int(category_index)]
        for _ in range(timing.events_per_block):
            fresh = [c for c in CAPTIONS[category] if c not in used]
            caption = str(rng.choice(fresh or CAPTIONS[category]))
            used.add(caption)
            events.append({"onset": round(onset, 1), "duration": timing.duration,
                           "trial_type": category, "caption": caption})
            onset += timing.duration + timing.interval
        onset += timing.rest
    return events
