"""``POST /v1/episodes``: a consistent (optionally grounded) sequence of calls."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from toolsim.apidoc import errors, link, request_body
from toolsim.http import JSONBytesResponse, read_body
from toolsim_toolactor.protocol import EpisodeCreate, EpisodeDetail, EpisodeOut
from toolsim_toolactor.routes.common import parse_model
from toolsim_toolactor.state import actor_state

router = APIRouter(tags=["episodes"])


CREATED = {
    "description": "The episode",
    "links": {
        "GetEpisode": link(
            "getEpisode", "The episode and its history", episode_id="$response.body#/episode_id"
        )
    },
}


@router.post(
    "/v1/episodes",
    status_code=201,
    operation_id="createEpisode",
    response_model=EpisodeOut,
    responses={201: CREATED, **errors(400, 404, 413, 503, 507)},
    openapi_extra=request_body(EpisodeCreate),
)
async def create_episode(request: Request) -> Response:
    state = actor_state(request)
    body = parse_model(EpisodeCreate, await read_body(request, state.settings.max_body_bytes))
    episode = await state.service.create_episode(body)
    out = {"episode_id": episode.id, "toolset_id": episode.toolset_id, "seed": episode.seed}
    return JSONBytesResponse(out, status_code=201)


@router.get(
    "/v1/episodes/{episode_id}",
    operation_id="getEpisode",
    response_model=EpisodeDetail,
    responses=errors(404, 503),
)
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
