"""Request and response models of the ranking service (pydantic), with the request limits.

The limits are part of the OpenAPI schema, so clients (and the property tests) see them:
a request past a limit is answered 422 naming the field (``loc`` in the error detail);
a body past :data:`MAX_BODY_BYTES` is answered 413 before it is parsed. The history limit is a
service setting (``recsys serve --max-history N``, default :data:`DEFAULT_MAX_HISTORY`):
:func:`request_models` builds the request models of an app with its limit, and the app's
OpenAPI schema shows that limit. Every request model
is strict (pydantic strict mode, unknown fields refused): ``"k": "5"``, ``"k": true``,
``"exclude_history": "yes"`` or ``0`` are 422, not coerced.

Example:
    >>> RecommendRequest(history=["50", "172"], k=5).exclude_history
    True
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: Largest request body, in bytes (1 MiB).
MAX_BODY_BYTES = 1 << 20
#: Default of the most item ids in one history (``ServeConfig.max_history``); the model reads ``max_len`` of
#: them, chosen by the bundle's long-history selection (the most recent, or recent plus DARE-searched older ones).
#: 10,000 ids of up to ~100 characters fit in :data:`MAX_BODY_BYTES`.
DEFAULT_MAX_HISTORY = 10_000
#: The history limit of the default request models (kept for importers; an app's limit is ``AppConfig.max_history``).
MAX_HISTORY = DEFAULT_MAX_HISTORY
#: Most items one request may ask for.
MAX_K = 1000
#: Most ids in an exclude list or a candidate list.
MAX_FILTER_IDS = 10000
#: Most queries in one batch request.
MAX_BATCH = 256
#: Longest item id, and longest item text / title.
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 20000
MAX_TITLE_CHARS = 1000

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


_HISTORY_DESCRIPTION = (
    "Source item ids the user interacted with, oldest first (at most the service's max_history; the model reads "
    "max_len of them, chosen by the bundle's history selection)."
)


class _Strict(BaseModel):
    """Base of every request model: strict types (no coercion between str, int, float, bool), no extra fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(_Strict):
    """One user's request: their history (source item ids, oldest first) and filters."""

    history: list[ItemId] = Field(..., min_length=1, max_length=DEFAULT_MAX_HISTORY, description=_HISTORY_DESCRIPTION)
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_history: bool = Field(True, description="Leave the history's items out of the answer.")
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_FILTER_IDS, description="Item ids never to return.")
    candidates: list[ItemId] | None = Field(
        None, max_length=MAX_FILTER_IDS, description="When given, rank only these item ids."
    )


class BatchRecommendRequest(_Strict):
    """Several independent recommend requests answered together."""

    requests: list[RecommendRequest] = Field(..., min_length=1, max_length=MAX_BATCH)


class ScoredItem(BaseModel):
    """One recommended item."""

    id: str = Field(..., description="Source item id.")
    score: float = Field(..., description="Inner product of the query vector and the item vector (higher is better).")
    title: str | None = Field(None, description="Display title from the catalogue.")


class ModelInfo(BaseModel):
    """Which model answered."""

    name: str
    version: str


class RecommendResponse(BaseModel):
    """Top items, best first."""

    items: list[ScoredItem]
    model: ModelInfo
    unknown_items: list[str] = Field(
        default_factory=list, description="Ids of the request not in the catalogue; they were ignored."
    )


def request_models(max_history: int = DEFAULT_MAX_HISTORY) -> tuple[type[RecommendRequest], type[BatchRecommendRequest]]:
    """``(RecommendRequest, BatchRecommendRequest)`` whose histories hold at most ``max_history`` ids.

    The default limit gives the module's classes themselves; another limit gives subclasses of the same
    names (so the OpenAPI schema keeps its component names) with that ``maxItems``.

    Raises:
        ConfigError: ``max_history`` is below 1.

    Example:
        >>> Single, Batch = request_models(50)
        >>> Single.model_json_schema()["properties"]["history"]["maxItems"]
        50
    """
    from pydantic import create_model

    from recsys.errors import ConfigError

    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ConfigError(f"max_history: must be an integer >= 1, got {max_history!r}")
    if max_history == DEFAULT_MAX_HISTORY:
        return RecommendRequest, BatchRecommendRequest
    single = create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        __doc__=RecommendRequest.__doc__,
        history=(list[ItemId], Field(..., min_length=1, max_length=max_history, description=_HISTORY_DESCRIPTION)),
    )
    batch = create_model(
        "BatchRecommendRequest",
        __base__=BatchRecommendRequest,
        __doc__=BatchRecommendRequest.__doc__,
        requests=(list[single], Field(..., min_length=1, max_length=MAX_BATCH)),
    )
    return single, batch


class BatchRecommendResponse(BaseModel):
    """One response per request, in order."""

    results: list[RecommendResponse]


class NewItem(_Strict):
    """A catalogue item added at runtime from its text."""

    id: ItemId = Field(..., description="New source item id (must not exist yet).")
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)] = Field(
        ..., description="Item text, embedded by the bundle's text encoder (title, description, ...)."
    )
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS)] | None = Field(None, description="Display title.")


class ItemInfo(BaseModel):
    """A catalogue item."""

    id: str
    index: int = Field(..., description="Row of the item in the token table.")
    title: str | None = None
    has_cf: bool = Field(..., description="False for items without training interactions.")
    cf_predicted: bool = Field(False, description="True when the item's CF embedding was predicted from its text (no training interaction; "
                                                  "a bundle without a text->CF map gives such items the zero vector instead).")
    added: bool = Field(..., description="True for items added at runtime.")
    available: bool = Field(True, description="False for items removed with DELETE /v1/items/{id}: never recommended, still valid in histories.")


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, and the field when one is to blame."""

    detail: str | list
    field: str | None = None


class Health(BaseModel):
    status: str
    items: int | None = None
    engine: str | None = None
    model: ModelInfo | None = None
