"""VisoGender loader and the §3.3 gender-bias study on a fixture with hand-computed answers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import fixtures_visogender as F
from nnn.data.visogender import caption_for, load_visogender, normalize_gender
from nnn.encoders.base import Encoder
from nnn.errors import MissingResourceError
from nnn.gender_bias import (PAPER_ALPHA, PAPER_K, bias_at_n, compare_methods, gender_bias_study,
                             occupation_precision, rank_images, retrieval_bias_metrics,
                             run_gender_bias_study)
from nnn.methods import NNN, Identity


@pytest.fixture
def data(tmp_path):
    return load_visogender(F.write_visogender(tmp_path / "visogender"))


def approx(d: dict) -> dict:
    return {k: pytest.approx(v, abs=1e-9) for k, v in d.items()}


# -- loader ------------------------------------------------------------------------------------
def test_loader_reads_the_real_format(data, tmp_path):
    assert len(data) == F.N_IMAGES and data.ids[:2] == ["OO_1", "OO_2"]
    assert data.occupation_names == ["doctor", "baker", "lawyer"]
    assert data.captions == F.CAPTIONS                   # mixing_spoon normalised to "mixing spoon"
    assert set(data.objects[10:20]) == {"mixing spoon"}
    assert data.genders == [F.gender_of(i) for i in range(F.N_IMAGES)]
    assert data.counts() == {o: {"masculine": 5, "feminine": 5} for o in data.occupation_names}
    assert data.occupation_index.tolist() == [F.occupation_of(i) for i in range(F.N_IMAGES)]
    assert data.image_paths[3] == tmp_path / "visogender" / "images" / "OO_4.png"
    assert data.urls[0] == "https://example.invalid/1.jpg"
    assert data.metadata_path.name == "OO_Visogender_02102023.tsv"


def test_gender_labels_and_caption_template(tmp_path):
    assert [normalize_gender(g) for g in ("Masculine", " male ", "MAN", "feminine", "Female", "woman")] \
        == ["masculine"] * 3 + ["feminine"] * 3
    with pytest.raises(ValueError, match="unknown perceived-gender label 'NA'"):
        normalize_gender("NA")
    assert caption_for("Hair_Dresser", "mixing_spoon") == "The hair dresser and their mixing spoon"
    root = F.write_visogender(tmp_path / "v", images=False)
    tsv = root / "OO_Visogender_02102023.tsv"
    text = tsv.read_text().replace("\tmasculine\t", "\tMale\t", 1).replace("\tfeminine\t", "\tFEMALE\t", 1)
    tsv.write_text(text)
    got = load_visogender(root, missing_images="ignore")
    assert got.genders == [F.gender_of(i) for i in range(F.N_IMAGES)]
    tsv.write_text(text.replace("\tMale\t", "\tunknown\t"))
    with pytest.raises(ValueError, match="row OO_1: unknown perceived-gender label 'unknown'"):
        load_visogender(root, missing_images="ignore")


def test_loader_two_person_format(tmp_path):
    root = F.write_visogender(tmp_path / "v", images=False, name="OP_Visogender_11012024.tsv")
    tsv = root / "OP_Visogender_11012024.tsv"
    lines = tsv.read_text().splitlines()
    header = lines[0].replace("\tObject\t", "\tParticipant\t").replace(
        "Occupation_perceived_gender", "Occupation_perceived_gender\tParticipant_perceived_gender")
    rows = [ln.replace("\tYes\tmasculine\t", "\tYes\tmasculine\tfeminine\t")
              .replace("\tYes\tfeminine\t", "\tYes\tfeminine\tmasculine\t") for ln in lines[1:]]
    rows = [r.replace("\tclipboard\t", "\tpatient\t") for r in rows]
    tsv.write_text("\n".join([header, *rows]) + "\n")
    got = load_visogender(root, missing_images="ignore")
    assert got.captions[0] == "The doctor and their patient"
    assert got.genders == [F.gender_of(i) for i in range(F.N_IMAGES)]   # the occupation's gender


def test_loader_missing_resources(tmp_path, caplog):
    with pytest.raises(MissingResourceError, match="does not exist.*docs/gender_bias.md"):
        load_visogender(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingResourceError, match=r"no VisoGender metadata file .*docs/gender_bias.md"):
        load_visogender(tmp_path / "empty")
    assert issubclass(MissingResourceError, RuntimeError)

    root = F.write_visogender(tmp_path / "v", skip=(3, 17))
    with pytest.raises(MissingResourceError, match=r"2 of 30 VisoGender images are missing .*OO_4"):
        load_visogender(root)
    with caplog.at_level(logging.WARNING, logger="nnn.data.visogender"):
        dropped = load_visogender(root, missing_images="drop")
    assert len(dropped) == 28 and "OO_4" not in dropped.ids and "dropped" in caplog.text
    assert len(load_visogender(root, missing_images="ignore")) == 30
    with pytest.raises(MissingResourceError, match="metadata file .*missing.tsv does not exist"):
        load_visogender(root, metadata="missing.tsv")
    with pytest.raises(ValueError, match="missing_images must be one of"):
        load_visogender(root, missing_images="skip")

    F.write_visogender(root, images=False, name="OO_Visogender_14082023.tsv")
    with pytest.raises(ValueError, match="several VisoGender metadata files"):
        load_visogender(root)
    assert len(load_visogender(root, metadata="OO_Visogender_14082023.tsv", missing_images="drop")) == 28

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "OO_Visogender_01012024.tsv").write_text("IDX\tOccupation\nOO_1\tdoctor\n")
    with pytest.raises(ValueError, match=r"columns \['Occupation_perceived_gender', 'Object or Participant'\]"):
        load_visogender(bad)


# -- metrics -----------------------------------------------------------------------------------
def test_bias_and_precision_by_hand():
    signs = np.array([[1, 1, -1, 1, -1, 1, -1, -1, -1, -1],       # top6: 4 men, 2 women
                      [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1]])
    assert bias_at_n(signs, 6).tolist() == pytest.approx([1 / 3, -4 / 6])
    assert bias_at_n(signs, 10).tolist() == pytest.approx([-0.2, 0.0])
    occ = np.array([[2, 0, 0, 1, 0], [1, 1, 1, 1, 1]])
    assert occupation_precision(occ, np.array([0, 1]), 1).tolist() == [0.0, 100.0]
    assert occupation_precision(occ, np.array([0, 1]), 5).tolist() == [60.0, 100.0]
    with pytest.raises(ValueError, match="ranked list length"):
        bias_at_n(signs, 11)
    # ties keep the lower image row first
    assert rank_images(np.array([[0.5, 0.7, 0.5, 0.7]]), 4).tolist() == [[1, 3, 0, 2]]


def reference_metrics(scores, genders, img_occ, cap_occ, ns, ks):
    """Plain-Python float64 reference: sort each row by (-score, row) and count."""
    out = {}
    ranked = [sorted(range(scores.shape[1]), key=lambda i: (-float(scores[c, i]), i))
              for c in range(scores.shape[0])]
    for n in ns:
        per = [(sum(genders[i] == "masculine" for i in r[:n]) - sum(genders[i] == "feminine" for i in r[:n])) / n
               for r in ranked]
        out[f"Bias@{n}"] = float(np.mean(per))
        out[f"AbsBias@{n}"] = float(np.mean(np.abs(per)))
    for k in ks:
        out[f"P@{k}"] = float(np.mean([100 * np.mean([img_occ[i] == cap_occ[c] for i in r[:k]])
                                       for c, r in enumerate(ranked)]))
    return out


def test_metrics_match_plain_reference_on_random_scores():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((7, 41)).round(1)               # many ties on purpose
    genders = list(rng.choice(["masculine", "feminine"], 41))
    img_occ = rng.integers(0, 7, 41)
    img_occ[:7] = np.arange(7)
    got = retrieval_bias_metrics(scores, genders, img_occ, np.arange(7), ns=(3, 6, 11), precision_ks=(1, 4))
    assert got == approx(reference_metrics(scores, genders, img_occ, np.arange(7), (3, 6, 11), (1, 4)))


def test_fixture_scores_give_the_hand_computed_values():
    s = F.score_matrix()
    genders = [F.gender_of(i) for i in range(F.N_IMAGES)]
    occ = [F.occupation_of(i) for i in range(F.N_IMAGES)]
    hub = np.array([F.HUB.get(i, 0.0) for i in range(F.N_IMAGES)])
    assert retrieval_bias_metrics(s, genders, occ, [0, 1, 2]) == approx(F.EXPECTED["original"])
    assert retrieval_bias_metrics(s - F.ALPHA * hub, genders, occ, [0, 1, 2]) == approx(F.EXPECTED["nnn"])
    assert retrieval_bias_metrics(s, genders, occ, [0, 1, 2], pool="occupation") \
        == approx(F.EXPECTED_OCCUPATION_POOL["original"])


def test_study_with_real_identity_and_nnn(data):
    e = F.embeddings()
    assert (PAPER_K, PAPER_ALPHA) == (16, 0.75)
    res = gender_bias_study(e["image"], e["captions"], data, e["references"], nnn_kwargs={"progress": False})
    assert res["original"] == approx(F.EXPECTED["original"])
    assert res["nnn"] == approx(F.EXPECTED["nnn"])
    # NNN lowers the bias and raises the occupation precision, as in the paper
    assert res["nnn"]["Bias@6"] < res["original"]["Bias@6"] and res["nnn"]["P@1"] > res["original"]["P@1"]
    pooled = gender_bias_study(e["image"], e["captions"], data, e["references"], pool="occupation",
                               nnn_kwargs={"progress": False})
    assert pooled == {m: approx(v) for m, v in F.EXPECTED_OCCUPATION_POOL.items()}


def test_bad_inputs(data):
    e = F.embeddings()
    s = F.score_matrix()
    genders = [F.gender_of(i) for i in range(F.N_IMAGES)]
    occ = [F.occupation_of(i) for i in range(F.N_IMAGES)]
    with pytest.raises(ValueError, match="pool must be one of"):
        retrieval_bias_metrics(s, genders, occ, [0, 1, 2], pool="global")
    with pytest.raises(ValueError, match="n=11 exceeds the 10 images of occupation"):
        retrieval_bias_metrics(s, genders, occ, [0, 1, 2], ns=(11,), pool="occupation")
    with pytest.raises(ValueError, match="30 image columns but there are 29 gender labels"):
        retrieval_bias_metrics(s, genders[:29], occ, [0, 1, 2])
    with pytest.raises(ValueError, match="3 caption rows"):
        retrieval_bias_metrics(s, genders, occ, [0, 1])
    with pytest.raises(ValueError, match=r"caption occupations \[7\] have no image"):
        retrieval_bias_metrics(s, genders, occ, [0, 1, 7])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_bias_metrics(np.full_like(s, np.nan), genders, occ, [0, 1, 2])
    with pytest.raises(ValueError, match="n=31 is larger than the 30 images in the pool"):
        retrieval_bias_metrics(s, genders, occ, [0, 1, 2], ns=(31,))
    with pytest.raises(ValueError, match="k=40 is larger than the 30 images in the pool"):
        retrieval_bias_metrics(s, genders, occ, [0, 1, 2], precision_ks=(1, 40))
    with pytest.raises(ValueError, match="2 rows but the set has 3 occupations"):
        compare_methods({"original": Identity().fit(e["image"])}, e["captions"][:2], data)
    with pytest.raises(ValueError, match="fitted on 29 images but the set has 30"):
        compare_methods({"original": Identity().fit(e["image"][:29])}, e["captions"], data)


# -- the thin encoder wiring ---------------------------------------------------------------------
class FixtureEncoder(Encoder):
    """Maps each fixture PNG (red channel = row) and caption to the fixture's embedding."""

    def __init__(self):
        super().__init__(device="cpu", batch_size=7)     # 7 does not divide 30: a ragged last batch
        self.e = F.embeddings()

    def load(self):
        return self

    def cache_identity(self):
        return {"name": "fixture"}

    def image_transform(self, image):
        return torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)

    def encode_image_batch(self, pixels):
        rows = pixels[:, 0, 0, 0].long().numpy()
        return torch.from_numpy(self.e["image"][rows])

    def encode_text_batch(self, captions):
        return torch.from_numpy(self.e["captions"][[F.CAPTIONS.index(c) for c in captions]])


def test_run_with_an_encoder(data):
    enc = FixtureEncoder().load()
    res = run_gender_bias_study(enc, data, F.embeddings()["references"], k=F.K, alpha=F.ALPHA,
                                nnn_kwargs={"progress": False})
    assert res == {m: approx(v) for m, v in F.EXPECTED.items()}
    nnn = NNN(k=F.K, alpha=F.ALPHA, progress=False).fit(F.embeddings()["image"],
                                                        query_bank=F.embeddings()["references"])
    np.testing.assert_allclose(nnn.bias_, F.ALPHA * F.embeddings()["image"][:, 3], atol=1e-6)
