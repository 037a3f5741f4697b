"""The served model of one worker, put together once for every front door: the holder with the retried loader,
the shadow challenger, and the hot-swap watcher that follows MODEL_DIR's active version.

The HTTP service (``app.serving.app``) and the stream consumer (``app.stream.runner``) each build one from their
settings, ``start`` it where their process runs (after uvicorn forked the worker, or in the consumer's loop) and
``close`` it when they stop, so both front doors load, swap and shadow a model the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from app.detector.model import Detector
from app.scoring.holder import ModelHolder, model_loader
from app.scoring.hot_swap import ModelWatcher
from app.scoring.metrics import MODEL_MAX_AGE
from app.scoring.promotion_guard import PromotionGuard
from app.scoring.settings import ScoringSettings
from app.scoring.shadow import ShadowScorer


@dataclass(frozen=True)
class ServedModel:
    holder: ModelHolder
    shadow: ShadowScorer
    watcher: ModelWatcher

    @classmethod
    def of(
        cls,
        settings: ScoringSettings,
        *,
        loader: Callable[[], Detector] | None = None,
        detector: Detector | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> ServedModel:
        """From ``settings``: ``loader`` replaces how the model is obtained (default: the active version of
        MODEL_DIR, trained first when allowed), ``detector`` makes it ready at once (tests), ``on_ready`` is told
        when the first model is there."""
        store = settings.model_store()
        MODEL_MAX_AGE.set(settings.model_max_age)  # what GridWatchModelStale compares the serving model's age with
        holder = ModelHolder(
            loader or model_loader(store, settings.scorer, train_if_missing=settings.train_if_missing),
            drift_window=settings.drift_window,
            detector=detector,
            on_ready=on_ready,
            model_dir=settings.model_dir,
        )
        guard = (
            PromotionGuard(
                readings=settings.model_rollback_readings,
                ratio=settings.model_rollback_ratio,
                rollback=store.rollback_promotion,
            )
            if settings.model_auto_rollback
            else None
        )
        shadow = ShadowScorer(max_share=settings.shadow_max_share, guard=guard)
        watcher = ModelWatcher(
            holder,
            store,
            interval=settings.model_poll_interval,
            scorer=settings.scorer,
            shadow=shadow,
            shadow_version=settings.shadow_model_version,
        )
        return cls(holder, shadow, watcher)

    def start(self) -> None:
        """Load the model and follow MODEL_DIR, each on a thread of its own, so the caller serves at once."""
        threading.Thread(target=self.holder.load, name="model-loader", daemon=True).start()
        threading.Thread(target=self.watcher.run, name="model-watcher", daemon=True).start()

    def close(self) -> None:
        """Stop following MODEL_DIR and retrying a failed load."""
        self.watcher.close()
        self.holder.close()
