"""What the monitor is told of each production draft (``MonitorReporter`` delivers it).
Candidates feed comparison tasks, not patients: they are not reported."""

from __future__ import annotations

from clinalign.common.protos import timestamp
from clinalign.generation.drafts import Draft
from clinalign.monitor.v1 import monitor_pb2


def production_output(draft: Draft) -> monitor_pb2.ProductionOutput:
    result = draft.result
    return monitor_pb2.ProductionOutput(
        output_id=draft.output_id,
        prompt=draft.message.text,
        text=result.text,
        model_version=result.model.version,
        prompt_template_version=draft.message.template_version,
        latency_s=result.duration_s,
        completion_tokens=result.completion_tokens,
        create_time=timestamp(draft.created),
        task=draft.message.task,
    )
