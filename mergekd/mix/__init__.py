"""Mixing: combine K teachers' next-byte distributions [K, N, 257] into one [N, 257].

Public API::

    from mergekd.mix import MIXERS, Mixer, build_mixer, parse_mix_spec
    mixer = build_mixer("linear:weights=0.3;0.7")      # or build_mixer({"name": "gated", "hidden": 32})
    mixer.fit(logprobs, masks, actual, teacher_names)  # learned / gated learn here; a no-op for the others
    mixed, mixed_mask = mixer(logprobs, masks, actual=actual)   # actual: only min-ce / softmax-ce need it
    mixer.describe(); mixer.save(path); Mixer.load(path)

Registered mixers: linear, uniform, product, min-ce, softmax-ce, learned, gated (plugins: entry-point group
``mergekd.mixers``). Every mixer reduces to a linear or a product pool of the teachers present at a row
(:mod:`mergekd.mix.pool`); they differ only in how they choose the weights.
"""

from .base import MIXERS, Mixer, MixerConfig
from .em import EMResult, fit_mixture_weights
from .features import teacher_features
from .fixed import LinearMixer, ProductMixer, UniformMixer
from .gated import GatedMixer
from .inputs import MixerNotFittedError, MixInputError, prepare, realised_logprobs
from .learned import LearnedMixer
from .pool import linear_pool, product_pool
from .sequence import MinCEMixer, SoftmaxCEMixer, sequence_cross_entropy
from .spec import build_mixer, parse_mix_spec

__all__ = [
    "MIXERS", "EMResult", "GatedMixer", "LearnedMixer", "LinearMixer", "MinCEMixer", "MixInputError", "Mixer",
    "MixerConfig", "MixerNotFittedError", "ProductMixer", "SoftmaxCEMixer", "UniformMixer", "build_mixer",
    "fit_mixture_weights", "linear_pool", "parse_mix_spec", "prepare", "product_pool", "realised_logprobs",
    "sequence_cross_entropy", "teacher_features",
]
