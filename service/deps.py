"""``Annotated`` dependency aliases over what the lifespan put on ``app.state``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.config import Settings
from service.gateway.pipeline import Pipeline
from service.telemetry.metrics import Metrics


def _session(request: Request) -> Iterator[Session]:
    """One session per request: committed on success, rolled back on error."""
    with request.app.state.sessions() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# async on purpose: FastAPI runs plain ``def`` dependencies in the threadpool (a thread hop per
# request on the hot path)
async def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


# scope="function": the commit happens before the response is sent, so a client that got 2xx
# reads its own write
SessionDep = Annotated[Session, Depends(_session, scope="function")]
PipelineDep = Annotated[Pipeline, Depends(_pipeline)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
