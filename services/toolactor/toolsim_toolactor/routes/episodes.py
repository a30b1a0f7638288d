"""``POST /v1/episodes``: a consistent (optionally grounded) sequence of calls."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from toolsim.http import JSONBytesResponse, read_body
from toolsim_toolactor.protocol import EpisodeCreate
from toolsim_toolactor.routes.common import parse_model
from toolsim_toolactor.state import actor_state

router = APIRouter(tags=["episodes"])


@router.post("/v1/episodes", status_code=201)
async def create_episode(request: Request) -> Response:
    state = actor_state(request)
    body = parse_model(EpisodeCreate, await read_body(request, state.settings.max_body_bytes))
    episode = await state.service.create_episode(body)
    out = {"episode_id": episode.id, "toolset_id": episode.toolset_id, "seed": episode.seed}
    return JSONBytesResponse(out, status_code=201)


@router.get("/v1/episodes/{episode_id}")
async def get_episode(episode_id: str, request: Request) -> Response:
    state = actor_state(request)
    episode = await state.service.get_episode(episode_id)
    events = await state.registry.episode_events(episode_id)
    out = {
        "episode_id": episode.id,
        "toolset_id": episode.toolset_id,
        "seed": episode.seed,
        "grounded": episode.grounding is not None,
        "events": events,
    }
    return JSONBytesResponse(out)
