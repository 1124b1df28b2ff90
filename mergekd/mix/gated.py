"""``gated``: per-byte teacher weights from a small MLP over what the teachers' distributions look like.

Why: the best teacher varies within a text (one knows code, one knows names; one is sharp after a word
boundary). Global weights cannot follow that; a gate looking at each teacher's entropy, top probability and
agreement with the others (:mod:`mergekd.mix.features`), plus optional caller features such as the student's
hidden state, can.

Fit: the usable fit rows are split in order and the last ``holdout`` fraction is held out (contiguous, because
neighbouring bytes are correlated and a random split would leak). The gate starts from whichever global
solution — uniform, or EM weights fitted on the training split — has the lower held-out NLL, and training is
early-stopped on held-out NLL (:mod:`mergekd.mix.gate`). So on its held-out split the gate is never worse
than uniform weights or those EM weights.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..errors import ConfigError, EmptyTextError, NonFiniteError
from .base import MIXERS, Mixer, MixerConfig, per_teacher
from .em import fit_mixture_weights
from .features import FEATURES_PER_TEACHER, feature_names, teacher_features
from .gate import GateNet, Split, train_gate
from .inputs import CHUNK_ROWS, LN2, NEG_INF, MixInputError, MixInputs, prepare
from .learned import fit_rows
from .pool import linear_pool

MIN_ROWS = 16  # fewer rows per split than this cannot support early stopping or a weight fit


class GatedConfig(MixerConfig):
    hidden: int = Field(32, ge=1, description="hidden units of the gate MLP")
    epochs: int = Field(200, ge=1, description="most passes over the training rows")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(1024, ge=1, description="rows per optimiser step")
    patience: int = Field(10, ge=1, description="stop after this many epochs without held-out improvement")
    holdout: float = Field(0.2, gt=0, lt=1, description="fraction of fit rows (the last ones) held out")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    seed: int = Field(0, description="seed of the initialisation and batch order")


@MIXERS.register("gated", aliases=("gate", "moe"))
class GatedMixer(Mixer):
    """Per-byte weights w_kn = softmax over present teachers of MLP(features_n); p = Σ_k w_kn p_kn."""

    name = "gated"
    Config = GatedConfig
    needs_fit = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.net: GateNet | None = None
        self.extra_dim = 0
        self.fit_report: dict[str, Any] = {}

    # -- features -----------------------------------------------------------------------------------------
    def _inputs(self, teacher_feats: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Gate inputs [N, 4K + F]: teacher features, then the caller's external features (checked)."""
        n = teacher_feats.shape[0]
        if self.extra_dim == 0:
            if features is not None:
                raise MixInputError("this gated mixer was fit without external features; call it without "
                                    "features= (or fit a new one with them)")
            return teacher_feats
        if features is None:
            raise ConfigError(f"this gated mixer was fit with {self.extra_dim} external features per row: pass "
                              f"features=<[N, {self.extra_dim}] tensor> (the same kind used at fit time)")
        if not isinstance(features, torch.Tensor) or tuple(features.shape) != (n, self.extra_dim):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise MixInputError(f"features must be [N, {self.extra_dim}] = [{n}, {self.extra_dim}], got {shape}")
        if not bool(torch.isfinite(features).all()):
            raise NonFiniteError("features= holds NaN or infinite values")
        return torch.cat([teacher_feats, features.detach().to(teacher_feats)], -1)

    def _fit_tensors(self, logprobs, masks, actual, features) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate inputs [N, D] float32 and realised log-probs [K, N] float64 of the fit data, on the CPU,
        computed in row chunks so float64 temporaries stay bounded whatever the fit set's size."""
        k, n = masks.shape
        feats, realised = [], []
        for r0 in range(0, n, CHUNK_ROWS):
            part = prepare(logprobs[:, r0:r0 + CHUNK_ROWS], masks[:, r0:r0 + CHUNK_ROWS],
                           actual[r0:r0 + CHUNK_ROWS], teacher_names=self.teacher_names)
            feats.append(teacher_features(part.logprobs, part.masks).float().cpu())
            idx = part.actual.view(1, -1, 1).expand(k, -1, 1)
            realised.append(part.logprobs.gather(-1, idx).squeeze(-1).cpu())
        ext = None if features is None else features.detach().float().cpu()
        return self._inputs(torch.cat(feats), ext), torch.cat(realised, 1)

    # -- fit ----------------------------------------------------------------------------------------------
    def _fit(self, logprobs, masks, actual, features) -> None:
        cfg = self.config
        if features is not None and (not isinstance(features, torch.Tensor) or features.dim() != 2):
            raise MixInputError("features must be a [N, F] tensor (one row of F numbers per byte)")
        self.extra_dim = 0 if features is None else int(features.shape[1])
        x, real = self._fit_tensors(logprobs, masks, actual, features)
        m = masks.cpu()
        usable = (m.any(0) & (real.max(0).values > NEG_INF)).nonzero().squeeze(1)
        n_held = int(round(usable.numel() * cfg.holdout))
        n_train = usable.numel() - n_held
        if n_held < MIN_ROWS or n_train < MIN_ROWS:
            raise EmptyTextError(f"mixer 'gated' needs at least {MIN_ROWS} usable fit rows in both the training "
                                 f"and the held-out split (holdout={cfg.holdout}); got {n_train} and {n_held}: "
                                 "give more fit text")
        rows_tr, rows_ho = usable[:n_train], usable[n_train:]
        train = Split(x[rows_tr], m[:, rows_tr].T.contiguous(), real[:, rows_tr].T.contiguous())
        held = Split(x[rows_ho], m[:, rows_ho].T.contiguous(), real[:, rows_ho].T.contiguous())

        k = m.shape[0]
        starts = {"uniform": torch.zeros(k, dtype=torch.float64)}
        em_rows, _ = fit_rows(real[:, rows_tr], m[:, rows_tr])
        if bool(em_rows.any()):
            starts["learned"] = fit_mixture_weights(real[:, rows_tr][:, em_rows]).weights.log()
        start_name = min(starts, key=lambda name: held.constant_nll(starts[name]))
        result = train_gate(train, held, starts[start_name].float(), hidden=cfg.hidden, epochs=cfg.epochs,
                            lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience,
                            weight_decay=cfg.weight_decay, seed=cfg.seed)
        self.net = result.net
        with torch.no_grad():
            weights_ho = torch.softmax(self.net(held.x).double().masked_fill(~held.present, NEG_INF), -1).mean(0)
            train_nll = train.nll(self.net(train.x))
        self.fit_report = {
            "rows_train": n_train, "rows_heldout": n_held, "start": start_name,
            "start_weights": torch.softmax(starts[start_name], 0).tolist(),
            "heldout_bits_per_byte": result.heldout_nll / LN2,
            "heldout_start_bits_per_byte": result.start_heldout_nll / LN2,
            "heldout_uniform_bits_per_byte": held.constant_nll(starts["uniform"]) / LN2,
            "train_bits_per_byte": train_nll / LN2,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "mean_heldout_weights": weights_ho.tolist(),
        }

    # -- use ----------------------------------------------------------------------------------------------
    def gate_log_weights(self, inputs: MixInputs, features: torch.Tensor | None = None) -> torch.Tensor:
        """[K, N] float64 log weights before masking (the pool renormalises over present teachers)."""
        x = self._inputs(teacher_features(inputs.logprobs, inputs.masks), features)
        self.net = self.net.to(inputs.logprobs.device)
        return self.net(x).double().T

    def _mix(self, inputs: MixInputs, features: torch.Tensor | None):
        log_w = self.gate_log_weights(inputs, features)
        return linear_pool(inputs.logprobs, inputs.masks, log_w, fallback_uniform=True)

    def _describe(self) -> dict[str, Any]:
        if self.net is None:
            return {"weights": None, "fitted": False}
        report = dict(self.fit_report)
        for key in ("mean_heldout_weights", "start_weights"):
            if key in report:
                report[key] = per_teacher(self, report[key])
        names = feature_names(self.names()) + [f"external{i}" for i in range(self.extra_dim)]
        return {"weights": report.get("mean_heldout_weights"), "weights_are": "mean per-byte weight, held-out rows",
                "features": names, "fit": report}

    # -- persistence --------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        if self.net is None:
            return {"net": None}
        return {"net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                "in_dim": int(self.net.mean.numel()), "extra_dim": self.extra_dim,
                "num_teachers": int(self.net.head.out_features), "fit_report": self.fit_report}

    def _load_params(self, params: dict[str, Any]) -> None:
        if params.get("net") is None:
            self.net = None
            return
        k, in_dim, extra = int(params["num_teachers"]), int(params["in_dim"]), int(params["extra_dim"])
        if FEATURES_PER_TEACHER * k + extra != in_dim:
            raise MixInputError(f"saved gate expects {in_dim} inputs, but {k} teachers and {extra} external "
                                f"features give {FEATURES_PER_TEACHER * k + extra}: the file is corrupt")
        net = GateNet(in_dim, self.config.hidden, k)
        net.load_state_dict(params["net"])
        self.net, self.extra_dim = net.eval(), extra
        self.fit_report = dict(params.get("fit_report") or {})
