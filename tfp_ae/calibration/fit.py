"""The calibration step of a run, after training: σ-scaling (`--recalibrate`) and conformal risk
control (`--risk`) on the held-out training images, each on its own part of them, and the checks,
made before training, that there are enough of them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tfp_ae.calibration.conformal import fit_conformal, min_calibration_images
from tfp_ae.calibration.scaling import MIN_RECALIBRATION_IMAGES, recalibrate
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from tfp_ae.config import RunConfig
    from tfp_ae.data.split import Split
    from tfp_ae.models import ProbabilisticModel


def held_out_parts(held_out: Split, config: RunConfig) -> tuple[Split | None, Split | None]:
    """(σ-scaling's images, conformal risk control's images) of the held-out `Split`, None where the
    step is off: both on, the first half and the second (λ is then fitted on images the scale never
    saw, so the held-out images stay exchangeable with new ones for RCPS's guarantee)."""
    scaling, conformal = config.recalibrate, config.risk is not None
    if scaling and conformal:
        half = held_out.count // 2
        return held_out.subset(0, half), held_out.subset(half)
    return (held_out if scaling else None), (held_out if conformal else None)


def check_held_out(held_out: Split, config: RunConfig) -> None:
    """Raises `InputError`, before training, when a calibration step has too few held-out images:
    `MIN_RECALIBRATION_IMAGES` for σ-scaling, `min_calibration_images(risk, delta)` for RCPS."""
    scaling, conformal = held_out_parts(held_out, config)
    shared = " (half of the held-out images: the other half is σ-scaling's)" if scaling and conformal else ""

    def check(part, need, flag):
        if part.count < need:
            raise InputError(f"{flag} needs at least {need} held-out images{shared}; {config.held_out_fraction:g} of "
                             f"the training images gives {part.count} (raise --validation-split or train on more images)")
    if scaling is not None:
        check(scaling, MIN_RECALIBRATION_IMAGES, "--recalibrate")
    if conformal is not None:  # K-RCPS certifies on half of its images, strata on half, stratum by stratum
        halves = 1 if config.risk_groups == config.risk_strata == 1 else 2
        check(conformal, min_calibration_images(config.risk, config.delta) * halves * config.risk_strata,
              f"--risk {config.risk:g} --delta {config.delta:g}"
              + ("" if config.risk_groups == 1 else f" --risk-groups {config.risk_groups}")
              + ("" if config.risk_strata == 1 else f" --risk-strata {config.risk_strata}"))


def calibrate(model: ProbabilisticModel, config: RunConfig, held_out: Split, num_levels: int, test_images: np.ndarray,
              test: Split) -> dict:
    """Run the calibration steps `config` asks for, in order: σ-scaling (`recalibrate`, on its part of
    `held_out`; `test_images` and `test` give its before-and-after numbers), then conformal risk
    control (`fit_conformal` on the raw pixels of its part). Returns `{"recalibration": dict or None,
    "conformal": `fit_conformal`'s dict and "calibration_images", or None, "fitted": whether the model now differs from
    the last epoch's checkpoint}`."""
    scaling, conformal = held_out_parts(held_out, config)
    out = dict(recalibration=None, conformal=None)
    if scaling is not None:
        out["recalibration"] = recalibrate(model, scaling, num_levels, config.seed, test_images, test,
                                           config.recalibration_criterion, config.force_recalibration,
                                           config.recalibration_method)
    if conformal is not None:
        how = (f"a λ per pixel group by K-RCPS (K = {config.risk_groups})" if config.risk_groups > 1 else
               f"a λ per stratum of images by RCPS (S = {config.risk_strata})" if config.risk_strata > 1 else "λ by RCPS")
        print(f"conformal risk control: {how} (α {config.risk:g}, δ {config.delta:g}) on {conformal.count} "
              "held-out training images", flush=True)
        fitted = fit_conformal(model, conformal.take()[0], config.risk, config.delta, config.risk_groups, config.seed,
                               config.risk_strata)
        per = fitted.get("group_lambdas") or fitted.get("strata_lambdas")
        print("conformal_lambda " + (", ".join(f"{v:.3g}" for v in per) + " (per group or stratum)" if per else
                                     f"{fitted['lambda']:.4g}") + ": the 90 % intervals scaled by it", flush=True)
        out["conformal"] = dict(fitted, calibration_images=conformal.count)
    rec = out["recalibration"] or {}
    refined = rec.get(rec.get("method")) or {}  # the local or PIT refinement's entry, if one ran
    out["fitted"] = bool(rec.get("applied") or refined.get("applied")) or conformal is not None
    return out
