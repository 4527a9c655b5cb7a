"""gRPC face of retrieval."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from services.common.candidates import to_protos
from services.common.db import served
from services.gen.recofleet.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.domain import Answer, CandidateRequest, NoModel, Retriever
from services.retrieval.model_store import ModelStore, NoPreviousVersion, UnknownVersion

MAX_LIMIT = 1000
log = logging.getLogger(__name__)


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, retriever: Retriever, models: ModelStore | None = None) -> None:
        self._retriever = retriever
        self._models = models
        # One rollback at a time in this process: two would race on CURRENT and the reload.
        self._switching = asyncio.Lock()

    async def GetCandidates(
        self, request: retrieval_pb2.GetCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.CandidatesResponse:
        if not request.member_id and not request.context_item_ids:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "member_id or context_item_ids is required"
            )
        limit = await _limit(request.limit, context)
        wanted = CandidateRequest(
            member_id=request.member_id,
            placement=request.placement or "home",
            limit=limit,
            context_items=list(request.context_item_ids),
            exclude=list(request.exclude_item_ids),
            category=request.category,
        )
        return await _answer(
            context, self._retriever, request, request.member_id, self._retriever.candidates, wanted
        )

    async def GetSimilarItems(
        self, request: retrieval_pb2.GetSimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.CandidatesResponse:
        if not request.item_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_id is required")
        limit = await _limit(request.limit, context)
        return await _answer(
            context,
            self._retriever,
            request,
            "",
            self._retriever.similar,
            request.item_id,
            limit,
            list(request.exclude_item_ids),
        )

    async def GetPopularItems(
        self, request: retrieval_pb2.GetPopularItemsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.CandidatesResponse:
        limit = await _limit(request.limit, context)
        return await _answer(
            context,
            self._retriever,
            request,
            "",
            self._retriever.popular,
            limit,
            list(request.exclude_item_ids),
            request.category or None,
        )

    async def GetModelInfo(
        self, request: retrieval_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.ModelInfo:
        try:
            meta = self._retriever.model.meta
        except NoModel as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return retrieval_pb2.ModelInfo(
            version=meta["version"],
            members=meta["members"],
            items=meta["items"],
            interactions=meta["interactions"],
            factors=meta["factors"],
            trained_at=meta["trained_at"],
        )

    async def ListModels(
        self, request: retrieval_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.ListModelsResponse:
        models = await self._store(context)
        listed = await asyncio.to_thread(_list_versions, models)
        return retrieval_pb2.ListModelsResponse(models=listed, served=self._served())

    async def RollbackModel(
        self, request: retrieval_pb2.RollbackModelRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.ModelInfo:
        models = await self._store(context)
        async with self._switching:
            before = models.current()
            try:
                target = await asyncio.to_thread(_switch, models, request.version)
            except NoPreviousVersion as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except UnknownVersion as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
            await self._serve(models, target, before, context)
        return _model_info(target, models.meta(target))

    async def _store(self, context: grpc.aio.ServicerContext) -> ModelStore:
        if self._models is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "this retrieval server was given no model store"
            )
        assert self._models is not None
        return self._models

    async def _serve(
        self,
        models: ModelStore,
        target: str,
        before: str | None,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Load `target` now, so the switch is live when the call answers. A version that
        does not load is refused and CURRENT goes back to what it was."""
        reason = ""
        try:
            await asyncio.to_thread(self._retriever.reload)
        except Exception as exc:  # an error the retriever did not refuse the version for
            log.exception("model version %s could not be loaded", target)
            reason = f"{type(exc).__name__}: {exc}"
        if self._served() == target:
            return  # by this call's reload or by the watcher's, either is fine
        refused = await asyncio.to_thread(models.refused)
        reason = reason or refused.get(target) or "it was not loaded"
        await asyncio.to_thread(_undo, models, target, reason, before)
        kept = f"{before} stays current" if before else "no version was current before"
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"version {target} could not be loaded ({reason}); {kept}",
        )

    def _served(self) -> str:
        return self._retriever.model.version if self._retriever.ready else ""


def _switch(models: ModelStore, version: str) -> str:
    if not version:
        return models.rollback()
    models.activate(version)
    return version


def _undo(models: ModelStore, target: str, reason: str, before: str | None) -> None:
    models.refuse(target, reason)
    if before is not None and before != target:
        models.activate(before)


def _list_versions(models: ModelStore) -> list[retrieval_pb2.ModelVersion]:
    current, refused = models.current(), models.refused()
    listed = []
    for version in models.versions():
        try:
            meta = models.meta(version)
        except (OSError, ValueError):
            continue  # pruned (or half-removed) while we listed: not a kept version
        listed.append(
            retrieval_pb2.ModelVersion(
                version=version,
                trained_at=str(meta.get("trained_at", "")),
                members=int(meta.get("members", 0)),
                items=int(meta.get("items", 0)),
                interactions=int(meta.get("interactions", 0)),
                factors=int(meta.get("factors", 0)),
                current=version == current,
                refused_reason=refused.get(version, ""),
                meta_json=json.dumps(meta, default=str),
            )
        )
    return listed


def _model_info(version: str, meta: dict[str, Any]) -> retrieval_pb2.ModelInfo:
    return retrieval_pb2.ModelInfo(
        version=version,
        members=int(meta.get("members", 0)),
        items=int(meta.get("items", 0)),
        interactions=int(meta.get("interactions", 0)),
        factors=int(meta.get("factors", 0)),
        trained_at=str(meta.get("trained_at", "")),
    )


async def _limit(requested: int, context: grpc.aio.ServicerContext) -> int:
    if requested < 0 or requested > MAX_LIMIT:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_LIMIT}"
        )
    return requested or 10


async def _answer(
    context: grpc.aio.ServicerContext,
    retriever: Retriever,
    request: Message,
    member_id: str,
    call: Callable[..., Answer],
    *args: object,
) -> retrieval_pb2.CandidatesResponse:
    """The answer to `request`: kept from an earlier one until the member's next event (or
    the catalog, or the model) changes it, else `call(*args)`."""
    answers = retriever.answers
    key = (type(request).__name__, request.SerializeToString(deterministic=True))
    kept = answers.get(member_id, key)
    if kept is not None:
        # Kept serialised: a third of the memory of the message object.
        return retrieval_pb2.CandidatesResponse.FromString(kept)
    started = answers.generation()
    try:
        answer = await served(retriever.inline, call, *args)
    except NoModel as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    response = retrieval_pb2.CandidatesResponse(
        candidates=to_protos(answer.candidates),
        model_version=answer.model_version,
        personalized=answer.personalized,
    )
    answers.put(member_id, key, response.SerializeToString(), started)
    return response
