"""WDL: JSON workflows validated by Pydantic, drawn as Mermaid, run as durable actors.

    from wdl import load, mermaid, run_workflow, WorkflowActor
"""

from wdl.engine import WorkflowActor
from wdl.graph import mermaid
from wdl.runner import run_workflow, start_message
from wdl.validate import load, validate

__all__ = ["WorkflowActor", "load", "mermaid", "run_workflow", "start_message", "validate"]
