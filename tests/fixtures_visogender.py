"""A tiny VisoGender copy with hand-computable gender-bias answers.

Three occupations x 10 images (rows 5 perceived men, then 5 women, as in the real file):
doctor (images 0-9), baker (10-19), lawyer (20-29). ``write_visogender`` writes the metadata
in the real single-person TSV format (header copied from OO_Visogender_02102023.tsv) and, if
asked, one 2x2 PNG per image whose red channel is the image row (so a stub encoder can map the
file back to its embedding).

Embeddings (d = 5, unit rows): dims 0-2 are the three occupations, dim 3 a "hub" direction,
dim 4 fills the norm. Caption c = e_c, so score(c, i) = S[c, i] below; every reference
caption = e_hub, so NNN's bias of image i is alpha * H[i] for any k <= #references, and NNN's
score is S[c, i] - 0.75 H[i] (alpha = 0.75). Cross-occupation scores are 0.10, except image 0
(a doctor, man, hub) with 0.60 for the lawyer caption. H = 0.4 for images 0, 1 (doctor men),
10, 11 (baker men); 0 elsewhere.

Rankings (top 10; m = man, f = woman; own-occupation images unless marked):

doctor, original: m.50 m.49 m.48 m.47 f.46 f.45 m.30 f.29 f.28 f.27  top6 4m2f -> 1/3; top10 0
doctor, NNN:      m.48 m.47 f.46 f.45 m.30 f.29 f.28 f.27 m.20 m.19  top6 3m3f -> 0;   top10 0
baker, original:  m.45 m.44 m.43 m.42 m.41 f.40 f.39 f.25 f.24 f.23  top6 5m1f -> 2/3; top10 0
baker, NNN:       m.43 m.42 m.41 f.40 f.39 f.25 f.24 f.23 m.15 m.14  top6 3m3f -> 0;   top10 0
lawyer, original: m.60(doctor img 0) m.50 f.49 f.48 m.35 m.34 m.33 m.32 f.31 f.20
                  top6 4m2f -> 1/3; top10 6m4f -> 1/5; P@1 0%; P@5 80%
lawyer, NNN:      m.50 f.49 f.48 m.35 m.34 m.33 m.32 f.31 m.30(doctor img 0) f.20
                  top6 4m2f -> 1/3; top10 6m4f -> 1/5; P@1 100%; P@5 100%

Means over the three captions are in ``EXPECTED`` (pool="all") and ``EXPECTED_OCCUPATION_POOL``
(each caption ranks its own 10 images only, so the doctor hub drops out of the lawyer list).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = ["IDX", "Sector", "Specialisation", "Occupation", "Object",
          "URL type (Type NA if can't find)", "LICENSE OK?", "Occupation_perceived_gender",
          "Error codes", "Annotator"]
#: (sector, specialisation, occupation, object as written in the file)
OCCUPATIONS = [("medical", "hospital_worker", "doctor", "clipboard"),
               ("service", "food_service", "baker", "mixing spoon"),
               ("office", "legal", "lawyer", "desk")]
PER_OCCUPATION = 10
N_IMAGES = len(OCCUPATIONS) * PER_OCCUPATION
CAPTIONS = ["The doctor and their clipboard", "The baker and their mixing spoon",
            "The lawyer and their desk"]
ALPHA, K, N_REFS = 0.75, 16, 32

OWN_SCORES = {  # scores of each occupation's own images, men first then women
    0: [0.50, 0.49, 0.48, 0.47, 0.30, 0.46, 0.45, 0.29, 0.28, 0.27],
    1: [0.45, 0.44, 0.43, 0.42, 0.41, 0.40, 0.39, 0.25, 0.24, 0.23],
    2: [0.50, 0.35, 0.34, 0.33, 0.32, 0.49, 0.48, 0.31, 0.20, 0.19],
}
CROSS_SCORE = 0.10
HUB = {0: 0.4, 1: 0.4, 10: 0.4, 11: 0.4}
LAWYER_HUB_SCORE = 0.60   # image 0 (doctor) for the lawyer caption

EXPECTED = {
    "original": {"Bias@6": (1 / 3 + 2 / 3 + 1 / 3) / 3, "AbsBias@6": (1 / 3 + 2 / 3 + 1 / 3) / 3,
                 "Bias@10": (0 + 0 + 1 / 5) / 3, "AbsBias@10": (0 + 0 + 1 / 5) / 3,
                 "P@1": (100 + 100 + 0) / 3, "P@5": (100 + 100 + 80) / 3},
    "nnn": {"Bias@6": (0 + 0 + 1 / 3) / 3, "AbsBias@6": (0 + 0 + 1 / 3) / 3,
            "Bias@10": (0 + 0 + 1 / 5) / 3, "AbsBias@10": (0 + 0 + 1 / 5) / 3,
            "P@1": 100.0, "P@5": 100.0},
}
EXPECTED_OCCUPATION_POOL = {
    "original": {"Bias@6": (1 / 3 + 2 / 3 + 1 / 3) / 3, "AbsBias@6": (1 / 3 + 2 / 3 + 1 / 3) / 3,
                 "Bias@10": 0.0, "AbsBias@10": 0.0},
    "nnn": {"Bias@6": (0 + 0 + 1 / 3) / 3, "AbsBias@6": (0 + 0 + 1 / 3) / 3,
            "Bias@10": 0.0, "AbsBias@10": 0.0},
}


def gender_of(row: int) -> str:
    return "masculine" if row % PER_OCCUPATION < 5 else "feminine"


def occupation_of(row: int) -> int:
    return row // PER_OCCUPATION


def score_matrix() -> np.ndarray:
    """S (3, 30): the original caption-image scores described in the module docstring."""
    s = np.full((len(OCCUPATIONS), N_IMAGES), CROSS_SCORE)
    for c, own in OWN_SCORES.items():
        s[c, c * PER_OCCUPATION:(c + 1) * PER_OCCUPATION] = own
    s[2, 0] = LAWYER_HUB_SCORE
    return s


def embeddings() -> dict[str, np.ndarray]:
    """image (30, 5), captions (3, 5), references (32, 5): float32 unit rows."""
    s = score_matrix()
    hub = np.array([HUB.get(i, 0.0) for i in range(N_IMAGES)])
    image = np.zeros((N_IMAGES, 5))
    image[:, :3] = s.T
    image[:, 3] = hub
    image[:, 4] = np.sqrt(1.0 - (image[:, :4] ** 2).sum(axis=1))
    captions = np.eye(5)[:3]
    refs = np.tile(np.eye(5)[3], (N_REFS, 1))
    return {"image": image.astype(np.float32), "captions": captions.astype(np.float32),
            "references": refs.astype(np.float32)}


def metadata_rows() -> list[list[str]]:
    rows = []
    for i in range(N_IMAGES):
        sector, spec, occ, obj = OCCUPATIONS[occupation_of(i)]
        if occ == "baker" and i % 2:
            obj = obj.replace(" ", "_")          # the real file has both spellings
        rows.append([f"OO_{i + 1}", sector, spec, occ, obj,
                     f"https://example.invalid/{i + 1}.jpg", "Yes", gender_of(i), "", "Tester"])
    return rows


def write_visogender(root: Path, *, images: bool = True, skip: tuple[int, ...] = (),
                     name: str = "OO_Visogender_02102023.tsv") -> Path:
    """Write the metadata (and 2x2 PNGs, red channel = row, except rows in ``skip``) under root."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(HEADER)] + ["\t".join(r) for r in metadata_rows()]
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if images:
        (root / "images").mkdir(exist_ok=True)
        for i in range(N_IMAGES):
            if i not in skip:
                Image.new("RGB", (2, 2), (i, 0, 0)).save(root / "images" / f"OO_{i + 1}.png")
    return root
