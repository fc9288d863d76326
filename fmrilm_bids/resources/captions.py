"""The shipped candidate pool of selectivity captions: plain sentences about everyday scenes.

``data/captions/caption_pool.tsv`` (columns ``topic``, ``caption``) is composed here, without
any download, from small word lists and sentence frames per topic: faces (people), places,
animals, tools (handheld objects), vehicles, food, text and body parts. The composition is
deterministic (a fixed seed); ``scripts/make_caption_pool.py`` rewrites the file and a test
checks that the file is what :func:`compose_caption_pool` makes.
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

#: Where the pool ships, relative to the package ``fmrilm_bids.resources``.
POOL_FILE = Path("data") / "captions" / "caption_pool.tsv"
#: Sentences per topic.
PER_TOPIC = 400
SEED = 20240

_PEOPLE = ("woman", "man", "girl", "boy", "old woman", "old man", "baby", "teenager",
           "young mother", "grandfather", "nurse", "farmer", "student", "chef")
_FACE_FRAMES = ("A close-up of a {a} {p}'s face {s}.", "The face of a {a} {p} {s}.",
                "A portrait of a {a} {p} {s}.", "A {a} {p} looks at the camera {s}.")
_FACE_ATTRS = ("smiling", "laughing", "serious", "sleepy", "surprised", "frowning",
               "freckled", "bearded", "worried", "cheerful")
_FACE_SETTINGS = ("with bright eyes", "in soft window light", "with a wide grin",
                  "with wrinkles around the eyes", "with raised eyebrows", "in the shade",
                  "with a calm expression", "with rosy cheeks")

_PLACES = ("beach", "kitchen", "forest path", "city street", "mountain valley", "library",
           "train station", "village square", "meadow", "harbour", "classroom", "desert",
           "living room", "market hall", "garden", "parking lot")
_PLACE_FRAMES = ("A view of a {a} {p} {s}.", "An empty {a} {p} {s}.",
                 "A wide photo of a {a} {p} {s}.", "A {a} {p} seen from afar {s}.")
_PLACE_ATTRS = ("quiet", "sunny", "foggy", "crowded", "snowy", "old", "wide", "rainy",
                "bright", "narrow")
_PLACE_SETTINGS = ("at dawn", "at sunset", "under a grey sky", "in the evening",
                   "after the rain", "in summer", "in winter", "at night")

_ANIMALS = ("dog", "cat", "horse", "cow", "sheep", "rabbit", "fox", "owl", "duck", "goat",
            "squirrel", "deer", "bear", "pig", "parrot", "elephant")
_ANIMAL_FRAMES = ("A {a} {p} {s}.", "A photo of a {a} {p} {s}.",
                  "Two {a} {p}s {s}.", "A {a} {p} resting {s}.")
_ANIMAL_ATTRS = ("brown", "young", "fluffy", "spotted", "small", "big", "white", "black",
                 "sleepy", "wild")
_ANIMAL_SETTINGS = ("in the grass", "by the river", "in a barn", "on a hill",
                    "in the snow", "under a tree", "in a field", "near the fence")

_TOOLS = ("hammer", "screwdriver", "wrench", "pair of scissors", "saw", "drill",
          "pair of pliers", "paintbrush", "shovel", "rake", "knife", "tape measure",
          "stapler", "ladle", "broom", "spanner")
_TOOL_FRAMES = ("A {a} {p} {s}.", "A photo of a {a} {p} {s}.", "An old {p}, {a}, {s}.",
                "A {a} {p} lying {s}.")
_TOOL_ATTRS = ("rusty", "new", "red", "metal", "wooden", "heavy", "small", "worn",
               "shiny", "blue")
_TOOL_SETTINGS = ("on a workbench", "on a table", "in a toolbox", "on the floor",
                  "on a shelf", "in a drawer", "next to some nails", "on a desk")

_VEHICLES = ("car", "bus", "bicycle", "train", "truck", "motorcycle", "boat", "tram",
             "tractor", "van", "scooter", "taxi", "airplane", "helicopter", "ship", "jeep")
_VEHICLE_FRAMES = ("A {a} {p} {s}.", "A photo of a {a} {p} {s}.", "A {a} {p} driving {s}.",
                   "A {a} {p} parked {s}.")
_VEHICLE_ATTRS = ("red", "old", "yellow", "fast", "white", "dusty", "small", "large",
                  "green", "shiny")
_VEHICLE_SETTINGS = ("on the road", "in the city", "near the station", "by the harbour",
                     "on a bridge", "in traffic", "on a country lane", "in the rain")

_FOODS = ("pizza", "salad", "bowl of soup", "sandwich", "cake", "plate of pasta",
          "bowl of rice", "loaf of bread", "basket of apples", "burger", "omelette",
          "pie", "plate of sushi", "bowl of noodles", "stack of pancakes", "curry")
_FOOD_FRAMES = ("A {a} {p} {s}.", "A photo of a {a} {p} {s}.", "A freshly made {a} {p} {s}.",
                "A {a} {p} ready to eat {s}.")
_FOOD_ATTRS = ("hot", "fresh", "homemade", "tasty", "warm", "spicy", "sweet", "large",
               "delicious", "simple")
_FOOD_SETTINGS = ("on a plate", "on a kitchen table", "in a restaurant", "on a picnic blanket",
                  "on a wooden board", "at breakfast", "at dinner", "next to a glass of water")

_TEXTS = ("sign", "poster", "page of a book", "street sign", "menu", "newspaper headline",
          "handwritten note", "label", "road sign", "shop sign", "letter", "price tag",
          "notice board", "calendar page", "ticket", "printed form")
_TEXT_FRAMES = ("A {a} {p} with printed words {s}.", "The words on a {a} {p} {s}.",
                "A {a} {p} full of text {s}.", "Black letters on a {a} {p} {s}.")
_TEXT_ATTRS = ("white", "large", "small", "old", "paper", "bold", "faded", "printed",
               "yellow", "plain")
_TEXT_SETTINGS = ("on a wall", "on a door", "in a window", "on a desk", "by the road",
                  "on a shop front", "pinned to a board", "in a hand")

_BODY = ("hand", "foot", "arm", "leg", "finger", "knee", "elbow", "shoulder", "back",
         "palm", "wrist", "ankle", "thumb", "neck", "toe", "fist")
_BODY_FRAMES = ("A person's {a} {p} {s}.", "A close-up of a {a} {p} {s}.",
                "A {a} human {p} {s}.", "Someone's {a} {p} {s}.")
_BODY_ATTRS = ("bare", "muscular", "tanned", "thin", "raised", "bent", "resting",
               "outstretched", "pale", "strong")
_BODY_SETTINGS = ("against a white background", "in the sunlight", "on a table",
                  "in motion", "in close view", "on the grass", "under a lamp",
                  "at the gym")

_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "faces": (_FACE_FRAMES, _FACE_ATTRS, _PEOPLE, _FACE_SETTINGS),
    "places": (_PLACE_FRAMES, _PLACE_ATTRS, _PLACES, _PLACE_SETTINGS),
    "animals": (_ANIMAL_FRAMES, _ANIMAL_ATTRS, _ANIMALS, _ANIMAL_SETTINGS),
    "tools": (_TOOL_FRAMES, _TOOL_ATTRS, _TOOLS, _TOOL_SETTINGS),
    "vehicles": (_VEHICLE_FRAMES, _VEHICLE_ATTRS, _VEHICLES, _VEHICLE_SETTINGS),
    "food": (_FOOD_FRAMES, _FOOD_ATTRS, _FOODS, _FOOD_SETTINGS),
    "text": (_TEXT_FRAMES, _TEXT_ATTRS, _TEXTS, _TEXT_SETTINGS),
    "body parts": (_BODY_FRAMES, _BODY_ATTRS, _BODY, _BODY_SETTINGS),
}
#: Topics of the pool, in file order.
TOPICS = tuple(_TOPICS)


def _article(sentence: str) -> str:
    """``a`` -> ``an`` before a vowel."""
    for vowel in "aeiou":
        sentence = sentence.replace(f" a {vowel}", f" an {vowel}")
        sentence = sentence.replace(f"A {vowel}", f"An {vowel}")
    return sentence


def compose_caption_pool(per_topic: int = PER_TOPIC, seed: int = SEED) -> pd.DataFrame:
    """Compose the pool: ``per_topic`` distinct sentences per topic, deterministically.

    Returns
    -------
    pandas.DataFrame
        Columns ``topic`` and ``caption``, topic by topic (:data:`TOPICS` order).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for topic, (frames, attributes, things, settings) in _TOPICS.items():
        combos = list(itertools.product(frames, attributes, things, settings))
        chosen = rng.choice(len(combos), size=min(per_topic, len(combos)), replace=False)
        for index in sorted(chosen):
            frame, attribute, thing, setting = combos[index]
            rows.append({"topic": topic,
                         "caption": _article(frame.format(a=attribute, p=thing, s=setting))})
    return pd.DataFrame(rows).drop_duplicates("caption", ignore_index=True)


def caption_pool_path() -> Path:
    """Path of the shipped pool file."""
    return Path(str(resources.files("fmrilm_bids.resources"))) / POOL_FILE


def load_caption_pool() -> pd.DataFrame:
    """The shipped pool (``topic``, ``caption``)."""
    return pd.read_csv(caption_pool_path(), sep="\t", keep_default_na=False)
