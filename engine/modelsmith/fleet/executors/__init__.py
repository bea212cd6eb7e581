"""Executors run one job command on a host: ``local`` (a subprocess here), ``ssh`` and
``ray`` (one file each), behind the :class:`~.base.Executor` protocol."""

from .base import Executor, Job, JobResult
from .local import LocalExecutor
from .ray import RayExecutor
from .ssh import SshExecutor

__all__ = ["Executor", "Job", "JobResult", "LocalExecutor", "RayExecutor", "SshExecutor"]
