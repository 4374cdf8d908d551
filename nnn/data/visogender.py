"""VisoGender (Hall et al., 2023) occupation images with perceived-gender labels, from a local copy.

The dataset ships only metadata: TSV files of image URLs in ``data/visogender_data/`` of
https://github.com/oxai/visogender. The NNN paper (§3.3) uses the single-person set
("occupation-object", OO): 23 occupations x 10 images, 5 perceived as men and 5 as women, each
occupation paired with one object. Its header (files ``OO_Visogender_<ddmmyyyy>.tsv``) is::

    IDX  Sector  Specialisation  Occupation  Object  URL type (Type NA if can't find)
    LICENSE OK?  Occupation_perceived_gender  Error codes  Annotator

The two-person set (``OP_Visogender_*.tsv``) has ``Participant`` instead of ``Object`` and a
``Participant_perceived_gender`` column; it loads the same way (the participant takes the
object's place in the caption, and the occupation's gender is the label).

Local layout (see docs/gender_bias.md for how to build it)::

    <root>/
        OO_Visogender_<date>.tsv        the metadata file, unchanged
        images/<IDX>.<ext>              one downloaded image per row, named by its IDX
                                        (e.g. images/OO_17.jpg); ext in IMAGE_EXTENSIONS

Normalisation: occupation and object names are lower-cased, underscores become spaces and
runs of blanks collapse (the real file has both ``mixing spoon`` and ``mixing_spoon``); gender
labels map to ``"masculine"`` / ``"feminine"`` (``GENDER_ALIASES``). Each occupation gets the
gender-neutral caption ``CAPTION_TEMPLATE`` ("The doctor and their clipboard").
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnn.errors import MissingResourceError

log = logging.getLogger(__name__)

ID_COLUMN = "IDX"
OCCUPATION_COLUMN = "Occupation"
#: the object (single-person set) or participant (two-person set) column, first one present wins
PARTNER_COLUMNS = ("Object", "Participant")
GENDER_COLUMN = "Occupation_perceived_gender"
URL_COLUMN = "URL type (Type NA if can't find)"

MASCULINE, FEMININE = "masculine", "feminine"
GENDER_ALIASES = {
    **dict.fromkeys(("masculine", "male", "man", "men", "m"), MASCULINE),
    **dict.fromkeys(("feminine", "female", "woman", "women", "f"), FEMININE),
}
CAPTION_TEMPLATE = "The {occupation} and their {object}"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
METADATA_GLOB = "O[OP]_Visogender_*.tsv"
MISSING_IMAGE_MODES = ("error", "drop", "ignore")

_HOW_TO_GET = ("see docs/gender_bias.md: copy OO_Visogender_<date>.tsv from "
               "https://github.com/oxai/visogender (data/visogender_data/OO/) into the root and "
               "download each row's URL to images/<IDX>.jpg")


def normalize_name(text: str) -> str:
    """Occupation/object name as used in captions: lower case, ``_`` -> space, single spaces."""
    return " ".join(text.replace("_", " ").lower().split())


def normalize_gender(label: str, where: str = "") -> str:
    """Map a perceived-gender label to ``"masculine"`` or ``"feminine"``; ValueError otherwise."""
    key = label.strip().lower()
    if key not in GENDER_ALIASES:
        raise ValueError(f"{where}unknown perceived-gender label {label!r}; expected one of "
                         f"{sorted(GENDER_ALIASES)}")
    return GENDER_ALIASES[key]


def caption_for(occupation: str, obj: str) -> str:
    """The gender-neutral caption of an occupation: ``"The <occupation> and their <object>"``."""
    return CAPTION_TEMPLATE.format(occupation=normalize_name(occupation), object=normalize_name(obj))


@dataclass
class VisoGenderSet:
    """One VisoGender image set, one entry per image (n images).

    ids, image_paths, urls, occupations, objects, genders: length-n lists; ``genders`` holds
    ``"masculine"``/``"feminine"``; ``image_paths`` are where the images are expected (they exist
    unless the set was loaded with ``missing_images="ignore"``).
    """

    ids: list[str]
    image_paths: list[Path]
    urls: list[str]
    occupations: list[str]
    objects: list[str]
    genders: list[str]
    metadata_path: Path

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def occupation_names(self) -> list[str]:
        """The distinct occupations in file order (n_occ,)."""
        return list(dict.fromkeys(self.occupations))

    @property
    def occupation_index(self) -> np.ndarray:
        """(n,) int64: row of each image's occupation in ``occupation_names``."""
        pos = {name: i for i, name in enumerate(self.occupation_names)}
        return np.array([pos[o] for o in self.occupations], dtype=np.int64)

    def object_of(self, occupation: str) -> str:
        """The object paired with ``occupation`` (its most frequent one; ties: first seen)."""
        objs = [o for occ, o in zip(self.occupations, self.objects) if occ == occupation]
        if not objs:
            raise ValueError(f"no image of occupation {occupation!r}; the set has "
                             f"{self.occupation_names}")
        return Counter(objs).most_common(1)[0][0]

    @property
    def captions(self) -> list[str]:
        """One gender-neutral caption per occupation, in ``occupation_names`` order (n_occ,)."""
        return [caption_for(occ, self.object_of(occ)) for occ in self.occupation_names]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{occupation: {"masculine": m, "feminine": f}}`` image counts."""
        out = {occ: {MASCULINE: 0, FEMININE: 0} for occ in self.occupation_names}
        for occ, g in zip(self.occupations, self.genders):
            out[occ][g] += 1
        return out


def find_metadata(root: Path) -> Path:
    """The one ``O[OP]_Visogender_*.tsv`` file in ``root``; MissingResourceError / ValueError otherwise."""
    found = sorted(root.glob(METADATA_GLOB))
    if not found:
        raise MissingResourceError(f"no VisoGender metadata file ({METADATA_GLOB}) in {root}; "
                                   + _HOW_TO_GET)
    if len(found) > 1:
        raise ValueError(f"several VisoGender metadata files in {root}: "
                         f"{[p.name for p in found]}; pass metadata= to choose one")
    return found[0]


def _image_path(images_dir: Path, image_id: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        p = images_dir / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


def _read_rows(path: Path) -> tuple[list[dict[str, str]], str]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a BOM
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        partner = next((c for c in PARTNER_COLUMNS if c in header), None)
        missing = [c for c in (ID_COLUMN, OCCUPATION_COLUMN, GENDER_COLUMN) if c not in header]
        if partner is None:
            missing.append(" or ".join(PARTNER_COLUMNS))
        if missing:
            raise ValueError(f"{path} is not a VisoGender metadata file: columns {missing} are "
                             f"missing (found {header}); use the TSV from the VisoGender repository")
        rows = [r for r in reader if (r.get(ID_COLUMN) or "").strip()]
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return rows, partner


def load_visogender(root: str | Path, *, metadata: str | Path | None = None,
                    images_dir: str = "images", missing_images: str = "error") -> VisoGenderSet:
    """Read a local VisoGender copy (layout in the module docstring).

    ``metadata``: the TSV (default: the one ``O[OP]_Visogender_*.tsv`` in ``root``; a relative
    path is taken relative to ``root``). ``missing_images``: ``"error"`` raises
    ``MissingResourceError`` when any row's image is absent, ``"drop"`` leaves those rows out
    (with a warning; VisoGender URLs die over time), ``"ignore"`` keeps every row and its
    expected path ``images/<IDX>.jpg`` (metadata-only use).
    """
    if missing_images not in MISSING_IMAGE_MODES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_MODES}, got {missing_images!r}")
    root = Path(root)
    if not root.is_dir():
        raise MissingResourceError(f"VisoGender root {root} does not exist; " + _HOW_TO_GET)
    meta_path = find_metadata(root) if metadata is None else root / Path(metadata)
    if not meta_path.is_file():
        raise MissingResourceError(f"VisoGender metadata file {meta_path} does not exist; " + _HOW_TO_GET)
    rows, partner = _read_rows(meta_path)
    img_dir = root / images_dir

    out = VisoGenderSet([], [], [], [], [], [], meta_path)
    absent = []
    for r in rows:
        image_id = r[ID_COLUMN].strip()
        where = f"{meta_path.name} row {image_id}: "
        # a short row (cut or edited file) has None in its missing columns
        occupation, obj = (normalize_name(r[c] or "") for c in (OCCUPATION_COLUMN, partner))
        if not occupation or not obj:
            raise ValueError(f"{where}the {OCCUPATION_COLUMN!r} or {partner!r} column is empty; "
                             "the file is cut or edited, use the TSV from the VisoGender "
                             "repository")
        path = _image_path(img_dir, image_id)
        if path is None:
            absent.append(image_id)
            if missing_images == "drop":
                continue
            path = img_dir / f"{image_id}{IMAGE_EXTENSIONS[0]}"
        out.ids.append(image_id)
        out.image_paths.append(path)
        out.urls.append((r.get(URL_COLUMN) or "").strip())
        out.occupations.append(occupation)
        out.objects.append(obj)
        out.genders.append(normalize_gender(r[GENDER_COLUMN] or "", where))
    if absent and missing_images == "error":
        raise MissingResourceError(
            f"{len(absent)} of {len(rows)} VisoGender images are missing from {img_dir} (first: "
            f"{absent[:5]}); {_HOW_TO_GET}, or pass missing_images='drop' to use the ones you have")
    if absent and missing_images == "drop":
        log.warning("VisoGender: %d of %d images missing from %s were dropped (first: %s)",
                    len(absent), len(rows), img_dir, absent[:5])
    if not out.ids:
        raise MissingResourceError(f"none of the {len(rows)} VisoGender images is in {img_dir}; "
                                   + _HOW_TO_GET)
    for occ in out.occupation_names:
        distinct = sorted({o for c, o in zip(out.occupations, out.objects) if c == occ})
        if len(distinct) > 1:
            log.info("VisoGender: occupation %r has objects %s; captions use %r", occ, distinct,
                     out.object_of(occ))
    return out
