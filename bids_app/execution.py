"""Running a nipype workflow the way the configuration says, with visible progress."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from nipype import config as nipype_config
from nipype import logging as nipype_logging
from nipype.pipeline.engine.utils import generate_expanded_graph
from nipype.pipeline.plugins.multiproc import MultiProcPlugin

from fmrilm_bids.config import Config
from fmrilm_bids.errors import RunFailedError
from fmrilm_bids.utils.locks import die_with_parent

LOGGER = logging.getLogger(__name__)


class ProgressReporter:
    """nipype ``status_callback``: logs each finished step as ``[done/total] node``.

    Node names carry the participant, the run and the stage (e.g.
    ``single_subject_01_wf.bold_task_rest_wf.motion``), so the log says where the run is.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def __call__(self, node: Any, status: str) -> None:
        if status == "end":
            self.done += 1
            LOGGER.info("[%d/%d] done: %s", self.done, self.total, node.fullname)
        elif status == "exception":
            self.done += 1
            LOGGER.error("[%d/%d] FAILED: %s", self.done, self.total, node.fullname)


def _worker_initializer(cwd: str, parent_pid: int) -> None:
    """What nipype's MultiProc does in each worker, plus: die with the main process."""

    os.chdir(cwd)
    os.environ["NIPYPE_NO_ET"] = "1"
    die_with_parent(parent_pid)


def multiproc_plugin(plugin_args: dict[str, Any]) -> Any:
    """nipype's ``MultiProc`` plugin whose workers are killed when the main process dies.

    After a ``kill -9`` of the main process, nipype's own workers would go on running (and
    then sit idle), racing a resumed run on the same work dir.
    """


    plugin = MultiProcPlugin(plugin_args=plugin_args)
    plugin.pool.shutdown(wait=False)  # no worker started yet: they start on first submit
    plugin.pool = ProcessPoolExecutor(
        max_workers=plugin.processors, initializer=_worker_initializer,
        initargs=(plugin._cwd, os.getpid()),
        mp_context=mp.get_context(plugin.plugin_args.get("mp_context")))
    return plugin


def count_nodes(workflow: Any) -> int:
    """Number of nodes nipype will run (iterables and MapNodes expanded)."""

    return len(generate_expanded_graph(workflow._create_flat_graph()).nodes())


def run_workflow(workflow: Any, config: Config) -> None:
    """Run ``workflow`` in the work dir with the configured nipype plugin.

    Re-running with the same work dir skips the nodes whose inputs did not change. Crash
    files go to the run's log folder.

    Raises
    ------
    RunFailedError
        When a node failed.
    """

    execution = config.execution
    execution.log_dir.mkdir(parents=True, exist_ok=True)
    nipype_level = "INFO" if execution.verbosity > 1 else "WARNING"
    settings = {
        "logging": {"workflow_level": nipype_level, "interface_level": nipype_level,
                    "utils_level": nipype_level},
        "execution": {
            "crashdump_dir": str(execution.log_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": execution.stop_on_first_crash,
            "parameterize_dirs": False,
            "remove_unnecessary_outputs": False,
            "create_report": False,
            "get_linked_libs": False,
        },
        "monitoring": {"enabled": False},
    }
    nipype_config.update_config(settings)
    for section, values in settings.items():  # a workflow keeps the config of its creation
        workflow.config.setdefault(section, {}).update(values)
    nipype_logging.update_logging(nipype_config)
    workflow.base_dir = str(execution.work_dir)
    plugin_args = config.nipype.resolved_plugin_args()
    if config.nipype.plugin in ("MultiProc", "Linear"):
        plugin_args["status_callback"] = ProgressReporter(count_nodes(workflow))
    LOGGER.info("Running %s with the %s plugin (work dir %s)", workflow.name,
                config.nipype.plugin, execution.work_dir)
    try:
        plugin = (multiproc_plugin(plugin_args) if config.nipype.plugin == "MultiProc"
                  else config.nipype.plugin)
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as err:
        crashes = sorted(execution.log_dir.glob("crash-*"))
        raise RunFailedError(
            f"{len(crashes) or 'some'} step(s) failed; read the crash file(s) in "
            f"{execution.log_dir} (first: {crashes[0].name if crashes else 'none'}), fix the "
            "cause and re-run with the same work dir to resume."
        ) from err
