"""The adaptation worker: fine-tunes in the background while the current model keeps serving.

With `adaptation.algorithm: reptile`, one thread waits for support changes. After
`adaptation.debounce_s` without a further change it reads the support set from the
task buffer and runs `adaptation.adapt` on it. An accepted candidate is saved to the
model store and handed to the pipeline worker, which swaps it in before its next batch,
so every batch is diagnosed by one model. A rejected candidate is discarded and its
reason logged. A failed run is logged with its traceback. All three are counted
(`adaptations_accepted`, `adaptations_rejected`, `adaptations_failed`), and in the last
two cases the current model keeps serving.

The same thread polls the model store for rollback requests about once a second, so
rollbacks and accepted versions never race each other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from edge_agent.adaptation import AdaptationCancelled, AdaptationSettings, FineTunedClassifier, SupportSet, adapt
from edge_agent.buffer import TaskBuffer
from edge_agent.config import AgentConfig
from edge_agent.classifier import FewShotClassifier
from edge_agent.counters import Counters
from edge_agent.errors import CheckpointError, EdgeAgentError
from edge_agent.features import get_transform
from edge_agent.model import EmbeddingNet
from edge_agent.model_store import BASE_VERSION, LoadedVersion, ModelStore

log = logging.getLogger(__name__)

ROLLBACK_POLL_S = 1.0
# Nice value of the adaptation thread: fine-tuning gets the CPU time the pipeline leaves.
ADAPTATION_NICE = 10

Classifier = FewShotClassifier | FineTunedClassifier


class PipelineLike(Protocol):
    """The parts of `pipeline.Pipeline` the worker uses."""

    classifier: Any

    def call_between_batches(self, action: Any) -> None: ...

    def refresh_support(self) -> None: ...


def lower_thread_priority() -> None:
    """Give the calling thread the nice value ADAPTATION_NICE, so the pipeline thread wins the CPU.

    On Linux the nice value belongs to each thread and is inherited by the threads it
    starts. With torch 2.13's CPU build (OpenMP backend) the OpenMP worker that this
    thread's parallel operations start was checked to carry the same nice value.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ADAPTATION_NICE)
    except (AttributeError, OSError) as exc:
        log.info("adaptation runs at normal priority: %s", exc)


def activate(pipeline: PipelineLike, classifier: Classifier) -> None:
    """Make `classifier` the pipeline's model; runs on the pipeline thread between batches.

    `refresh_support` then installs the buffer's current support set, which is a no-op
    for a version trained on exactly that set and re-initialises its head otherwise
    (labels that arrived while it was fine-tuned).
    """
    pipeline.classifier = classifier
    pipeline.refresh_support()


class AdaptationWorker:
    """Background fine-tuning and rollback for one agent; see the module docstring."""

    def __init__(
        self,
        *,
        base_model: EmbeddingNet,
        base_metadata: Mapping[str, Any],
        device: torch.device,
        store: ModelStore,
        buffer: TaskBuffer,
        settings: AdaptationSettings,
        debounce_s: float,
        n_shot_min: int,
        counters: Counters,
    ) -> None:
        self.base_model = base_model
        self.base_metadata = dict(base_metadata)
        self.device = device
        self.store = store
        self.buffer = buffer
        self.settings = settings
        self.debounce_s = debounce_s
        self.n_shot_min = n_shot_min
        self.counters = counters
        self._window_size = int(base_metadata["window_size"])
        self._transform = get_transform(str(base_metadata["input_transform"]))

        self._changed = threading.Event()
        self._last_change = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipeline: PipelineLike | None = None
        self.last_result: dict[str, Any] | None = None

        loaded = store.load_active_or_previous(device, base_sha256=self.base_metadata.get("weights_sha256"))
        if loaded is None:
            self.active_version = BASE_VERSION
            self.initial_classifier: Classifier = FewShotClassifier(base_model, base_metadata, device)
            self._current_embedding = base_model
            # None: the first support set seen is adapted to, including one already in the buffer.
            self._adapted_fingerprint: str | None = None
        else:
            self.active_version = loaded.record.version
            self.initial_classifier = self._classifier_from(loaded)
            self._current_embedding = loaded.embedding
            self._adapted_fingerprint = loaded.support_fingerprint
        log.info("model store %s: active version %s", store.dir, self.active_version)

    # Control

    def start(self, pipeline: PipelineLike) -> None:
        self._pipeline = pipeline
        self._thread = threading.Thread(target=self._run, name="adaptation", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("adaptation worker did not finish within %.1f s", timeout_s)

    def notify_support_changed(self) -> None:
        """Schedule a fine-tuning run `debounce_s` after the last call; safe from any thread."""
        self._last_change = time.monotonic()
        self._changed.set()

    def status(self) -> dict[str, Any]:
        return {
            "active_version": self.active_version,
            "accepted": self.counters.get("adaptations_accepted"),
            "rejected": self.counters.get("adaptations_rejected"),
            "failed": self.counters.get("adaptations_failed"),
            "last": self.last_result,
        }

    # Loop

    def _run(self) -> None:
        lower_thread_priority()
        while not self._stop.is_set():
            self._changed.wait(timeout=ROLLBACK_POLL_S)
            if self._stop.is_set():
                return
            try:
                self.poll_rollback()
            except Exception:  # noqa: BLE001 - the worker must survive a bad request
                log.exception("handling a rollback request failed")
                self.counters.add("rollbacks_failed")
            if not self._changed.is_set():
                continue
            wait_s = self._last_change + self.debounce_s - time.monotonic()
            if wait_s > 0:
                self._stop.wait(min(wait_s, ROLLBACK_POLL_S))
                continue
            self._changed.clear()
            self.adapt_once()

    def adapt_once(self) -> str:
        """Fine-tune on the buffer's support set now; return "accepted", "rejected", "failed", "skipped" or "cancelled".

        Any error (buffer, fine-tuning, store) is logged with its traceback and counted
        as a failed adaptation, and the current model keeps serving.
        """
        try:
            return self._adapt()
        except AdaptationCancelled:
            log.info("adaptation cancelled: the agent is stopping")
            return "cancelled"
        except Exception:  # noqa: BLE001 - a failed run must leave the current model serving
            log.exception("adaptation failed; version %s keeps serving", self.active_version)
            self.counters.add("adaptations_failed")
            self.last_result = {"result": "failed", "ts": time.time()}
            return "failed"

    def _adapt(self) -> str:
        support = {
            name: windows for name, windows in self.buffer.support().items() if len(windows) >= self.n_shot_min
        }
        if len(support) < 2:
            return "skipped"
        stacked = SupportSet.from_mapping(support, self._window_size)
        if stacked.fingerprint == self._adapted_fingerprint:
            return "skipped"
        # Set before the run, so a support set that fails or is rejected is not retried.
        self._adapted_fingerprint = stacked.fingerprint
        candidate = adapt(
            self.base_model, self._current_embedding, stacked, self._transform, self.settings, self.device, self._stop
        )

        check = candidate.check
        self.last_result = {"ts": time.time(), "adapt_s": round(candidate.duration_s, 3), **check.as_dict()}
        if not check.accepted:
            self.counters.add("adaptations_rejected")
            self.last_result["result"] = "rejected"
            log.warning(
                "fine-tuned candidate rejected: leave-out accuracy %.3f < %.3f of version %s on %d held-out "
                "support examples (%d folds); version %s keeps serving",
                check.candidate_accuracy, check.current_accuracy, self.active_version,
                check.n_held_out, check.folds, self.active_version,
            )
            return "rejected"

        record = self.store.save(candidate, self.base_metadata, parent=self.active_version)
        classifier = FineTunedClassifier(
            candidate.embedding, self.base_metadata, self.device, version=record.version,
            classes=candidate.support.classes, head_weight=candidate.head_weight,
            head_bias=candidate.head_bias, support_fingerprint=candidate.support.fingerprint,
        )
        self._install(classifier, candidate.embedding, record.version)
        self.counters.add("adaptations_accepted")
        self.last_result["result"] = "accepted"
        self.last_result["version"] = record.version
        log.info(
            "model %s accepted: %d classes, leave-out accuracy %.3f (current %.3f), fine-tuned in %.2f s",
            record.version, len(candidate.support.classes), check.candidate_accuracy,
            check.current_accuracy, candidate.duration_s,
        )
        return "accepted"

    def poll_rollback(self) -> None:
        """Apply a pending rollback request from `edge-agent model rollback`, if any."""
        request = self.store.take_rollback_request()
        if request is None:
            return
        version = request["version"]
        try:
            if version == BASE_VERSION:
                classifier: Classifier = FewShotClassifier(self.base_model, self.base_metadata, self.device)
                embedding = self.base_model
            else:
                loaded = self.store.load(version, self.device)
                classifier = self._classifier_from(loaded)
                embedding = loaded.embedding
            self.store.set_active(version)
        except (CheckpointError, EdgeAgentError) as exc:
            log.error("rollback to %s failed: %s; version %s keeps serving", version, exc, self.active_version)
            self.counters.add("rollbacks_failed")
            self.store.record_rollback(request, applied=False, message=str(exc))
            return

        # The current support set counts as adapted to, so the rollback is not undone
        # by a fine-tuning run before the next label arrives.
        support = {name: w for name, w in self.buffer.support().items() if len(w) >= self.n_shot_min}
        self._adapted_fingerprint = SupportSet.from_mapping(support, self._window_size).fingerprint if support else None
        previous = self.active_version
        self._install(classifier, embedding, version)
        self.counters.add("rollbacks")
        self.store.record_rollback(request, applied=True, message=f"rolled back from {previous} to {version}")
        log.info("model %s active: rolled back from %s on request", version, previous)

    # Helpers

    def _install(self, classifier: Classifier, embedding: EmbeddingNet, version: str) -> None:
        self._current_embedding = embedding
        self.active_version = version
        if self._pipeline is not None:
            pipeline = self._pipeline
            pipeline.call_between_batches(lambda: activate(pipeline, classifier))

    def _classifier_from(self, loaded: LoadedVersion) -> FineTunedClassifier:
        return FineTunedClassifier(
            loaded.embedding, self.base_metadata, self.device, version=loaded.record.version,
            classes=loaded.classes, head_weight=loaded.head_weight, head_bias=loaded.head_bias,
            support_fingerprint=loaded.support_fingerprint,
        )



def make_adaptation_worker(
    config: AgentConfig,
    base_model: EmbeddingNet,
    base_metadata: Mapping[str, Any],
    device: torch.device,
    buffer: TaskBuffer,
    counters: Counters,
) -> AdaptationWorker | None:
    """Build the worker and its model store for `adaptation.algorithm: reptile`, else return None."""
    adaptation = config.adaptation
    if adaptation.algorithm != "reptile":
        return None
    settings = AdaptationSettings(steps=adaptation.steps, inner_lr=adaptation.inner_lr, leave_out_folds=adaptation.leave_out_folds)
    return AdaptationWorker(
        base_model=base_model,
        base_metadata=base_metadata,
        device=device,
        store=ModelStore(config.storage.dir, keep_versions=config.storage.keep_versions),
        buffer=buffer,
        settings=settings,
        debounce_s=adaptation.debounce_s,
        n_shot_min=adaptation.n_shot_min,
        counters=counters,
    )
