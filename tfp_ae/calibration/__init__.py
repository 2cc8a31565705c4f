"""Can a model's uncertainty be trusted, and how is it made trustworthy?

- `tfp_ae.calibration.pit`: measuring it: PIT values of each pixel's marginal, the coverage of
  central intervals, the calibration error over all pixels and within quartiles of the predicted
  spread, the CRPS (`calibration`, the `calibration` entry of `metrics.json`);
- `tfp_ae.calibration.scaling`: σ-scaling, one scalar on every scale of the head fitted on
  held-out images, refused when it breaks the likelihood (`recalibrate`, `--recalibrate`);
- `tfp_ae.calibration.local`: local recalibration, a factor on each pixel's scale that depends on the
  scale (`fit_local_scales`, `--recalibration-method local`);
- `tfp_ae.calibration.pit_recalibration`: PIT recalibration, each pixel's CDF composed with a histogram of
  the held-out PIT values of its group of scales, a density still (`fit_pit_recalibration`,
  `--recalibration-method pit`);
- `tfp_ae.calibration.conformal`: a guarantee: conformal risk control (RCPS) of the per-pixel
  intervals, one λ fitted on held-out images so that at most a fraction α of a new image's pixels
  fall outside their intervals, with probability 1 - δ (`fit_conformal`, `--risk`, `--delta`), or
  one λ per pixel group (K-RCPS, `krcps_lambdas`, `--risk-groups`);
- `tfp_ae.calibration.fit`: the step of a run that applies them after training (`calibrate`).
"""
from tfp_ae.calibration.conformal import (
    DEFAULT_DELTA,
    DEFAULT_RISK,
    check_risk,
    conformal_report,
    fit_conformal,
    hb_p_value,
    krcps_lambdas,
    min_calibration_images,
    pixel_groups,
    rcps_lambda,
)
from tfp_ae.calibration.fit import calibrate, check_held_out, held_out_parts
from tfp_ae.calibration.local import check_local, fit_local_scales, reset_local_scales
from tfp_ae.calibration.pit import (
    CALIBRATION_IMAGES,
    LEVELS,
    PIT_BINS,
    SPREAD_BINS,
    calibration,
    calibration_by_std,
    calibration_error,
    coverage_at,
    crps_from,
    crps_inputs,
    pit_batch_size,
    pit_values,
    pixel_crps,
)
from tfp_ae.calibration.pit_recalibration import (
    check_pit_recalibration,
    fit_pit_recalibration,
    pit_groups,
    reset_pit_recalibration,
)
from tfp_ae.calibration.scaling import (
    HELD_OUT_SEED,
    MAX_BITS_PER_DIM_LOSS,
    MIN_RECALIBRATION_IMAGES,
    SIGMA_SCALE_BOUNDS,
    fit_sigma_scale,
    recalibrate,
)

__all__ = ["calibrate", "calibration", "calibration_by_std", "calibration_error", "CALIBRATION_IMAGES",
           "check_held_out", "check_local", "check_pit_recalibration", "check_risk", "conformal_report",
           "coverage_at", "crps_from", "crps_inputs", "DEFAULT_DELTA", "DEFAULT_RISK", "fit_conformal",
           "fit_local_scales", "fit_pit_recalibration", "fit_sigma_scale", "hb_p_value", "held_out_parts",
           "krcps_lambdas", "HELD_OUT_SEED", "LEVELS", "MAX_BITS_PER_DIM_LOSS", "min_calibration_images",
           "MIN_RECALIBRATION_IMAGES", "pit_batch_size", "PIT_BINS", "pit_groups", "pit_values", "pixel_crps",
           "pixel_groups", "rcps_lambda", "recalibrate", "reset_local_scales", "reset_pit_recalibration",
           "SIGMA_SCALE_BOUNDS", "SPREAD_BINS"]
