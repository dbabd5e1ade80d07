"""Ownership verification: secret grouped key sets, the exact group test, reference context.

>>> from stealproof.ownership import generate_key_set, verify
>>> key = generate_key_set(60, (1, 8, 8), 10, seed=1234, groups=6)  # doctest: +SKIP
>>> verify(suspect_model, key).stolen  # doctest: +SKIP
"""

from stealproof.ownership.keys import (
    KeyFileError,
    KeySet,
    class_map_key_set,
    generate_key_set,
    key_set_from_tensors,
    load_key_set,
    save_key_set,
)
from stealproof.ownership.records import key_set_from_records
from stealproof.ownership.stats import (
    Verdict,
    binomial_sf,
    decide,
    group_null_pmf,
    group_p_value,
    groups_matched,
    min_p_value,
    null_mean,
    null_rate_upper,
)
from stealproof.ownership.verify import (
    Calibration,
    answer_counts,
    calibrate,
    default_calibration_path,
    load_calibration,
    load_suspect,
    match_rate,
    predict_labels,
    save_calibration,
    train_reference_models,
    verify,
)

__all__ = [
    "Calibration",
    "KeyFileError",
    "KeySet",
    "Verdict",
    "answer_counts",
    "binomial_sf",
    "calibrate",
    "class_map_key_set",
    "decide",
    "default_calibration_path",
    "generate_key_set",
    "group_null_pmf",
    "group_p_value",
    "groups_matched",
    "key_set_from_records",
    "key_set_from_tensors",
    "load_calibration",
    "load_key_set",
    "load_suspect",
    "match_rate",
    "min_p_value",
    "null_mean",
    "null_rate_upper",
    "predict_labels",
    "save_calibration",
    "save_key_set",
    "train_reference_models",
    "verify",
]
