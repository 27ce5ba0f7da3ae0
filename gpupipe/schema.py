"""Every column of the per-sample ledger: its name, Arrow dtype and owning stage.

One row per sample.  Stages add columns; they never rename or drop another
stage's columns.  Column names carry their owning stage as a prefix
(``hash_*``, ``dedup_*``) except the ingest identity columns.  Other modules
refer to columns through the constants here, never through string literals.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pa.DataType
    doc: str
    nullable: bool = True


def _cols(*cols: Column) -> tuple[Column, ...]:
    return cols


# --- ingest: identity of each sample -------------------------------------------------
SAMPLE_ID = "sample_id"
PATH = "path"
REL_PATH = "rel_path"
LABEL = "label"
SPLIT = "split"
FILE_BYTES = "ingest_file_bytes"
LOCATOR = "ingest_locator"

INGEST = _cols(
    Column(SAMPLE_ID, pa.int64(), "stable id: xxh3-64 of rel_path, as signed int64", False),
    Column(PATH, pa.string(), "absolute path of the source file (read-only): the image, or the tar shard / Parquet file holding it", False),
    Column(REL_PATH, pa.string(), "path relative to the source root, POSIX separators (shard.tar/member, file.parquet/row)", False),
    Column(LABEL, pa.string(), "class label as given by the source"),
    Column(SPLIT, pa.string(), "split as given by the source (train/val/test), null if none"),
    Column(FILE_BYTES, pa.int64(), "size in bytes at ingest time of the file, tar member or Parquet image; null if it could not be stat'ed"),
    Column(LOCATOR, pa.string(), "where the bytes are inside `path` (gpupipe.io.sources): null for a loose file, tar:OFFSET:SIZE, parquet:ROW:COLUMN, missing:REASON"),
)

# --- hash: per-partition work (read, sniff, decode, hash) ------------------------------
IMAGE_FORMAT = "hash_format"
IMAGE_WIDTH = "hash_width"
IMAGE_HEIGHT = "hash_height"
IS_INVALID = "is_invalid_issue"
INVALID_REASON = "invalid_reason"
BYTES_HASH = "hash_bytes"
PIXELS_HASH = "hash_pixels"
PHASH = "hash_phash"
SHIFT_KEY = "hash_shift"

HASH = _cols(
    Column(IMAGE_FORMAT, pa.string(), "format from the file header (png, jpeg, bmp, tiff, webp, gif, heic, heif, avif)"),
    Column(IMAGE_WIDTH, pa.int32(), "width in pixels from the header"),
    Column(IMAGE_HEIGHT, pa.int32(), "height in pixels from the header"),
    Column(IS_INVALID, pa.bool_(), "true when the file is not a usable image", False),
    Column(INVALID_REASON, pa.string(), "why the file is invalid (gpupipe.io.sniff; missing, unreadable, undecodable: gpupipe.stages.hashing), null if valid"),
    Column(BYTES_HASH, pa.string(), "xxh3-128 of the file bytes, hex; null for unreadable files"),
    Column(PIXELS_HASH, pa.string(), "128-bit hash of the decoded RGB pixels and shape, hex"),
    Column(PHASH, pa.uint64(), "64-bit DCT perceptual hash of the decoded image"),
    Column(SHIFT_KEY, pa.uint64(), "64-bit shift-tolerant key: Fourier-magnitude comparisons (gpupipe.hashing.shiftkey)"),
)

# --- dedup: global grouping over the hash columns -----------------------------------
DEDUP_GROUP = "dedup_group"
DEDUP_DUPLICATE_OF = "dedup_duplicate_of"
DEDUP_KIND = "dedup_kind"
DEDUP_DISTANCE = "dedup_distance"
DEDUP_SIMILARITY = "dedup_similarity"
DEDUP_GROUP_SIZE = "dedup_group_size"
DEDUP_KEEP = "dedup_keep"
DEDUP_LABEL_CONFLICT = "is_label_conflict_issue"
DEDUP_SPLIT_LEAK = "is_split_leak_issue"

# dedup_kind values: how a row relates to its group's representative.
KIND_UNIQUE = "unique"            # group of one
KIND_REPRESENTATIVE = "representative"
KIND_BYTES = "bytes"              # identical file bytes to the representative
KIND_PIXELS = "pixels"            # identical decoded pixels, different bytes
KIND_NEAR = "near"                # joined through perceptual-hash neighbours
DEDUP_KINDS = (KIND_UNIQUE, KIND_REPRESENTATIVE, KIND_BYTES, KIND_PIXELS, KIND_NEAR)

DEDUP = _cols(
    Column(DEDUP_GROUP, pa.int64(), "sample_id of the group's representative; null for invalid rows"),
    Column(DEDUP_DUPLICATE_OF, pa.int64(), "sample_id this row duplicates; null for kept rows"),
    Column(DEDUP_KIND, pa.string(), "one of DEDUP_KINDS; null for invalid rows"),
    Column(DEDUP_DISTANCE, pa.int16(), "pHash Hamming distance to the representative (0..64)"),
    Column(DEDUP_SIMILARITY, pa.float32(), "same-picture similarity to the representative (gpupipe.hashing.verify), -1..1; 1 for byte/pixel twins; null for representatives and unique rows"),
    Column(DEDUP_GROUP_SIZE, pa.int32(), "number of rows in the group (1 for unique)"),
    Column(DEDUP_KEEP, pa.bool_(), "true for the one row kept per group; false for duplicates and invalid rows", False),
    Column(DEDUP_LABEL_CONFLICT, pa.bool_(), "the group holds more than one distinct label", False),
    Column(DEDUP_SPLIT_LEAK, pa.bool_(), "the group spans more than one split", False),
)

# --- rank: auxiliary-model scores of each scored row (latest round that scored it) ---
RANK_ROUND = "rank_round"
RANK_LOSS = "rank_loss"
RANK_PRED = "rank_pred"
RANK_PROB_GIVEN = "rank_prob_given"
RANK_MARGIN = "rank_margin"
RANK_PROBS = "rank_probs"
RANK_OOF = "rank_oof"
RANK_OUTLIER = "rank_outlier_score"
RANK_VOTES = "rank_neighbour_votes"
RANK_VOTE_GIVEN = "rank_vote_given"
RANK_FLAG = "is_mislabeled_issue"
RANK_MODEL_PROBS = "rank_model_probs"
RANK_TRAIN_MARGIN = "rank_train_margin"
RANK_EVIDENCE = "rank_evidence"

RANK = _cols(
    Column(RANK_ROUND, pa.int32(), "round whose model produced this row's scores; null if never scored"),
    Column(RANK_LOSS, pa.float32(), "cross-entropy of the current label, nats (higher = more suspect)"),
    Column(RANK_PRED, pa.string(), "the model's most probable class: the suggested label"),
    Column(RANK_PROB_GIVEN, pa.float32(), "probability of the current label, 0..1 (lower = more suspect)"),
    Column(RANK_MARGIN, pa.float32(), "prob of the current label minus the largest other, -1..1 (<0: model disagrees)"),
    Column(RANK_PROBS, pa.list_(pa.float32()), "softmax over the classes listed in rank.json, in that order"),
    Column(RANK_OOF, pa.bool_(), "true when the score is out-of-fold (the row was not trained on)"),
    Column(RANK_OUTLIER, pa.float32(), "robust z-score of the distance to the model's training images of the "
           "nearest class, in its features (models.outlier): ~0 typical, >= 5 far from every class (models.outlier.FAR)"),
    Column(RANK_VOTES, pa.list_(pa.float32()), "each class's share among the row's nearest training images in "
           "the model's features (models.outlier.knn_vote), classes as in rank_probs"),
    Column(RANK_VOTE_GIVEN, pa.float32(), "the neighbours' vote for the current label, 0..1 (its share in "
           "rank_neighbour_votes)"),
    Column(RANK_MODEL_PROBS, pa.list_(pa.float32()), "with rank --models M >= 2: each model's own softmax, "
           "M vectors of the classes in rank_probs, one after the other (rank_probs is their mean); null with "
           "one model.  The automatic policy's gate asks each model to agree (stages.review.AutoPolicy)"),
    Column(RANK_TRAIN_MARGIN, pa.float32(), "out-of-fold rounds: the area under the margin, the logit of the "
           "current label minus the largest other logit, averaged over the training steps of the models that "
           "trained on the row (the other folds'), after their warm-up (models.train); lower = more suspect; "
           "null in other rounds"),
    Column(RANK_EVIDENCE, pa.string(), "what the row's probabilities rest on: models trained on the run's own "
           "labels ('trained') or heads on a backbone the user brought, alone or with them ('backbone'; "
           "'self-supervised' when it is gpupipe pretrain's), on 'colour' or 'gray' images: e.g. "
           "'trained-colour'.  The automatic policy relabels 'trained-colour' and 'self-supervised-colour' "
           "rows only with --colour-relabels always (stages.review.AutoPolicy.colour_relabels)"),
    Column(RANK_FLAG, pa.bool_(), "likely mislabeled: the rows whose label is most likely wrong given the model, "
           "the neighbours' votes and the estimated noise, as many as maximise the flags' expected F1 "
           "(models.score.flag_label_issues); never a row whose outlier score is >= models.outlier.FAR", False),
)

# --- review: decisions on each row (latest; the full history is decisions.parquet) ---
REVIEW_STATUS = "review_status"
REVIEW_LABEL = "review_label"
REVIEW_ROUND = "review_round"
REVIEW_SOURCE = "review_source"
REVIEW_HOLDOUT = "review_holdout"

# review_status values
STATUS_CERTIFIED = "certified"     # valid, label confirmed (review_label == label)
STATUS_RELABELED = "relabeled"     # valid, label corrected to review_label
STATUS_REMOVED = "removed"         # invalid or unusable: out of the curated set
REVIEW_STATUSES = (STATUS_CERTIFIED, STATUS_RELABELED, STATUS_REMOVED)
# review_source values: who decided
SOURCE_PERSON = "person"
SOURCE_ORACLE = "oracle"           # known labels standing in for a person (benchmarks)
SOURCE_AUTO = "auto"               # the documented automatic policy (--review auto)
SOURCE_SEED = "seed"               # a random seed sample trusted as given (no person looked)
SOURCE_SEED_DIR = "seed-dir"       # matched an image in a directory of known-good images
REVIEW_SOURCES = (SOURCE_PERSON, SOURCE_ORACLE, SOURCE_AUTO, SOURCE_SEED, SOURCE_SEED_DIR)

REVIEW = _cols(
    Column(REVIEW_STATUS, pa.string(), "one of REVIEW_STATUSES; null while not yet certified"),
    Column(REVIEW_LABEL, pa.string(), "the label after review (the given one when confirmed); null if not reviewed"),
    Column(REVIEW_ROUND, pa.int32(), "round of the latest decision (0: the seed set)"),
    Column(REVIEW_SOURCE, pa.string(), "who made the latest decision: one of REVIEW_SOURCES"),
    Column(REVIEW_HOLDOUT, pa.bool_(), "a certified row used as validation (early stopping), not for training"),
)

# --- balance: the curated set (classes cut to a target when asked); the rest surplus or excluded
BALANCE_STATUS = "balance_status"
BALANCE_REASON = "balance_reason"
BALANCE_LABEL = "balance_label"
BALANCE_TIER = "balance_tier"
BALANCE_SURPLUS_RANK = "balance_surplus_rank"

# balance_status values
BAL_KEPT = "kept"                  # in the curated set
BAL_SURPLUS = "surplus"            # usable, over its class's target: first to come back
BAL_EXCLUDED = "excluded"          # not usable: see balance_reason
BALANCE_STATUSES = (BAL_KEPT, BAL_SURPLUS, BAL_EXCLUDED)
# balance_reason values for excluded rows (surplus rows: "over_target" or "over_cap")
EXCLUDED_REASONS = ("invalid", "duplicate", "removed", "unlabelled", "suspect")
# balance_tier: how trustworthy a usable row is (lower first, kept first)
TIER_REVIEWED, TIER_AUTO, TIER_SCORED, TIER_UNSCORED = 0, 1, 2, 3

BALANCE = _cols(
    Column(BALANCE_STATUS, pa.string(), "one of BALANCE_STATUSES", False),
    Column(BALANCE_REASON, pa.string(), "why excluded (EXCLUDED_REASONS) or surplus (over_target, over_cap)"),
    Column(BALANCE_LABEL, pa.string(), "the label used downstream: the reviewed one, else the given one"),
    Column(BALANCE_TIER, pa.int8(), "0 reviewed by a person/oracle/seed-dir, 1 decided automatically or "
                                    "trusted seed, 2 open and scored, 3 open and unscored; null if excluded"),
    Column(BALANCE_SURPLUS_RANK, pa.int32(), "order in which surplus rows of a class come back (0 first)"),
)

# --- split: a test set and N folds over the rest --------------------------------------
SPLIT_SET = "split_set"
SPLIT_FOLD = "split_fold"
SET_TRAIN = "train"
SET_TEST = "test"

SPLITS = _cols(
    Column(SPLIT_SET, pa.string(), "test or train for kept rows and their duplicates (same as the group's "
                                   "kept row); null otherwise"),
    Column(SPLIT_FOLD, pa.int16(), "for train rows: the fold (0..N-1) whose validation set holds the row"),
)

STAGES: dict[str, tuple[Column, ...]] = {
    "ingest": INGEST, "hash": HASH, "dedup": DEDUP, "rank": RANK, "review": REVIEW,
    "balance": BALANCE, "split": SPLITS,
}


def columns(*stages: str) -> tuple[Column, ...]:
    return tuple(c for s in stages for c in STAGES[s])


def arrow_schema(*stages: str) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.dtype, c.nullable) for c in columns(*stages)])


def names(*stages: str) -> list[str]:
    return [c.name for c in columns(*stages)]
