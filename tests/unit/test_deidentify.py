"""The de-identification policy (HIPAA Safe Harbor) and the pseudonyms, without a server."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anonymizer import deidentify, kanon
from anonymizer.deidentify import RESTRICTED_ZIP3, StudyKeys

KEY = b"test-master-key-of-some-length-0123456789"
UTC = dt.UTC


def test_pseudonyms_are_stable_within_a_study_and_differ_across_studies() -> None:
    a1, a2, b = StudyKeys(KEY, "study-a"), StudyKeys(KEY, "study-a"), StudyKeys(KEY, "study-b")
    assert a1.pid("alice.smith") == a2.pid("alice.smith")
    assert a1.pid("alice.smith") != b.pid("alice.smith")
    assert a1.pid("alice.smith") != a1.pid("alice.smyth")
    assert a1.vid("v-1") == a2.vid("v-1") != b.vid("v-1")
    # A pid and a vid of the same string never coincide (domain-separated inputs).
    assert a1.pid("x-1") != a1.vid("x-1")
    assert len(a1.pid("alice.smith")) == 32 and int(a1.pid("alice.smith"), 16) >= 0


def test_pseudonyms_depend_on_the_master_key() -> None:
    assert StudyKeys(KEY, "s").pid("alice.smith") != StudyKeys(KEY + b"!", "s").pid("alice.smith")


def test_the_pseudonym_is_hmac_sha256_of_the_study_key() -> None:
    import hashlib
    import hmac

    study_key = hmac.new(KEY, b"study:s", hashlib.sha256).digest()
    expected = hmac.new(study_key, b"pid:alice.smith", hashlib.sha256).hexdigest()[:32]
    assert StudyKeys(KEY, "s").pid("alice.smith") == expected


VISIT_IDS = ["0b9f2c1e-0000-4000-8000-000000000001", "", "é" * 40, "v" * 200, "x\ty"]


def test_vids_in_bulk_are_the_hmac_of_each_visit_id() -> None:
    import hashlib
    import hmac

    keys = StudyKeys(KEY, "s")
    study_key = hmac.new(KEY, b"study:s", hashlib.sha256).digest()
    expected = [
        hmac.new(study_key, b"vid:" + v.encode(), hashlib.sha256).hexdigest()[:32].encode()
        for v in VISIT_IDS
    ]
    assert keys.vids([v.encode() for v in VISIT_IDS]) == expected
    assert [keys.vid(v).encode() for v in VISIT_IDS] == expected
    assert keys.vids([]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.uuids(), max_size=40))
def test_aes_mmo_vids_are_aes_of_the_visit_id_xored_with_it(ids: list[uuid.UUID]) -> None:
    """The bulk path (one AES call, one XOR, one hexlify) is, visit for visit, the
    construction of the module's docstring computed one block at a time."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    keys = StudyKeys(KEY, "s", deidentify.AES_MMO)
    study_key = hmac.new(KEY, b"study:s", hashlib.sha256).digest()
    vid_key = hmac.new(study_key, b"vid:aes-mmo", hashlib.sha256).digest()

    def reference(u: uuid.UUID) -> bytes:
        block = Cipher(algorithms.AES(vid_key), modes.ECB()).encryptor().update(u.bytes)
        return bytes(a ^ b for a, b in zip(block, u.bytes, strict=True)).hex().encode()

    expected = [reference(u) for u in ids]
    assert keys.vids([str(u).encode() for u in ids]) == expected
    assert [keys.vid(str(u)).encode() for u in ids] == expected


def test_aes_mmo_vids_are_stable_within_a_study_and_differ_across_studies_and_keys() -> None:
    visit = "0b9f2c1e-0000-4000-8000-000000000001"
    a1, a2 = StudyKeys(KEY, "study-a", "aes-mmo"), StudyKeys(KEY, "study-a", "aes-mmo")
    assert a1.vid(visit) == a2.vid(visit) != StudyKeys(KEY, "study-b", "aes-mmo").vid(visit)
    assert a1.vid(visit) != StudyKeys(KEY + b"!", "study-a", "aes-mmo").vid(visit)
    assert a1.vid(visit) != StudyKeys(KEY, "study-a").vid(visit)  # the other scheme
    assert a1.pid("alice.smith") == StudyKeys(KEY, "study-a").pid("alice.smith")
    assert a1.version.startswith("aes-mmo:") and StudyKeys(KEY, "s").version.startswith("hmac")
    with pytest.raises(ValueError, match="scheme"):
        StudyKeys(KEY, "s", "rot13")


@settings(max_examples=200, deadline=None)
@given(
    good=st.lists(st.uuids().map(str), max_size=4),
    bad=st.one_of(
        st.text(max_size=40),
        # a UUID's characters, its dashes moved: the hex digits still 32 and the length 36
        st.uuids().map(
            lambda u: u.hex[:7] + "-" + u.hex[7:11] + "--" + u.hex[11:19] + "-" + u.hex[19:]
        ),
    ),
    at=st.integers(min_value=0, max_value=4),
)
def test_aes_mmo_refuses_a_visit_id_that_is_not_a_uuid(good: list[str], bad: str, at: int) -> None:
    """Anything but a UUID's text, anywhere in a block, fails the block: no vid is computed
    from hex digits shifted across visits."""
    try:
        uuid_text = str(uuid.UUID(bad)) == bad
    except ValueError:
        uuid_text = False
    assume(not uuid_text)
    ids = [*good[:at], bad, *good[at:]]
    with pytest.raises(ValueError, match="not a UUID"):
        StudyKeys(KEY, "s", deidentify.AES_MMO).vids([v.encode() for v in ids])


def test_a_key_longer_than_a_block_is_hashed_first_as_hmac_does() -> None:
    import hashlib
    import hmac

    from anonymizer.deidentify import _KeyedPrefix

    for key in (b"k" * 64, b"k" * 65, b"k" * 200, b""):
        want = hmac.new(key, b"p:value", hashlib.sha256).hexdigest()[:32].encode()
        assert _KeyedPrefix(key, b"p:").one(b"value") == want


@pytest.mark.parametrize(
    ("born", "today", "expected"),
    [
        (dt.date(1980, 4, 2), dt.date(2026, 11, 24), 1980),
        (dt.date(1937, 1, 1), dt.date(2026, 11, 24), 1937),  # 89
        (dt.date(1936, 12, 31), dt.date(2026, 11, 24), "<=1936"),  # may be 90 at year end
        (dt.date(1920, 5, 5), dt.date(2026, 11, 24), "<=1936"),
        (dt.date(1937, 6, 1), dt.date(2027, 1, 1), "<=1937"),
    ],
)
def test_ages_over_89_are_one_group(born, today, expected) -> None:
    assert deidentify.birth_year(born, deidentify.ninety_plus_cutoff(today)) == expected


def test_an_earlier_birth_year_joins_the_90_plus_group_when_its_time_comes() -> None:
    assert deidentify.regroup_birth_year(1937, 1937) == "<=1937"
    assert deidentify.regroup_birth_year(1938, 1937) == 1938
    assert deidentify.regroup_birth_year("<=1936", 1937) == "<=1936"


@pytest.mark.parametrize(
    ("code", "country", "expected"),
    [
        ("62701", "US", "627"),
        ("62701-1234", "US", "627"),
        ("627011234", "US", None),
        ("62701", None, None),
        ("03601", "US", "000"),
        ("89301", "US", "000"),
        ("03612-1234", "US", "000"),
        ("05901", None, None),
        ("SW1A 1AA", "GB", None),
        ("62701", "DE", None),
        ("6270", "US", None),
        (None, "US", None),
        ("abcde", "US", None),
        ("０３６１２", "US", None),
        ("٠٣٦١٢", "US", None),
        ("62701\n", "US", None),
        (" 62701", "US", None),
        (62701, "US", None),
    ],
)
def test_zip3(code, country, expected) -> None:
    assert deidentify.zip3(code, country) == expected


def test_the_restricted_areas_are_the_seventeen_of_safe_harbor() -> None:
    assert len(RESTRICTED_ZIP3) == 17
    for area in RESTRICTED_ZIP3:
        assert deidentify.zip3(area + "12", "US") == "000"


PLANTED = {
    "givenName": "Zebediah",
    "familyName": "Quackenbush",
    "userName": "zeb.quackenbush",
    "email": "zeb@quack.example",
    "phone": "+1-555-0199",
    "line": "742 Evergreen Terrace",
    "city": "Shelbyville",
    "postalCode": "62704",
    "notes": "lives with his cat Mr Whiskers",
    "clinician": "dr.hibbert",
    "visitId": "3f2b8e9c-1111-4a4a-9b9b-abcdefabcdef",
    "display": "Type 2 diabetes mellitus",
    "reason": "annual check of Zebediah",
}


def test_records_keep_only_what_the_policy_allows() -> None:
    keys = StudyKeys(KEY, "s")
    p = deidentify.participant(
        keys, PLANTED["userName"], dt.date(1980, 4, 2), "female",
        {"line": PLANTED["line"], "city": PLANTED["city"], "region": "IL",
         "postalCode": PLANTED["postalCode"], "country": "US"},
        1936,
    )  # fmt: skip
    assert p == {
        "kind": "participant",
        "pid": keys.pid(PLANTED["userName"]),
        "birthYear": 1980,
        "sex": "female",
        "zip3": "627",
        "country": "US",
    }
    v = deidentify.visit(
        keys,
        p["pid"],
        PLANTED["visitId"],
        "outpatient",
        dt.datetime(2026, 11, 20, 9, 0, tzinfo=UTC),
        dt.datetime(2026, 11, 20, 9, 31, 40, tzinfo=UTC),
        [{"system": "ICD-10", "code": "E11.9", "display": PLANTED["display"]}],
        {"heightCm": 168.0, "heartRate": 70, "colour": "blue"},
        [
            {"name": "metformin", "dose": "500 mg", "frequency": "twice daily"},
            {"name": "metformin 500 mg tablet", "system": "RxNorm", "code": "860975"},
        ],
    )
    assert v == {
        "kind": "visit",
        "pid": p["pid"],
        "vid": keys.vid(PLANTED["visitId"]),
        "year": 2026,
        "type": "outpatient",
        "durationMinutes": 32,
        "diagnoses": [{"system": "ICD-10", "code": "E11.9"}],
        "vitals": {"heightCm": 168.0, "heartRate": 70},
        "medications": [{"system": "RxNorm", "code": "860975"}],
    }
    text = repr([p, v])
    for value in PLANTED.values():
        assert value not in text
    assert "2026-11-20" not in text and "1980-04-02" not in text


def test_visit_year_is_the_utc_year_and_an_open_visit_has_no_duration() -> None:
    keys = StudyKeys(KEY, "s")
    start = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    v = deidentify.visit(keys, "p", "v", "inpatient", start, None, None, None, None)
    assert v["year"] == 2027 and v["durationMinutes"] is None
    assert v["diagnoses"] == [] and v["vitals"] is None and v["medications"] == []


def person(pid: str, year, sex="female", zip3="627") -> dict:
    return {
        "kind": "participant",
        "pid": pid,
        "birthYear": year,
        "sex": sex,
        "zip3": zip3,
        "country": "US",
    }


def test_k_anonymity_reports_the_smallest_group_and_generalises_nothing_without_k() -> None:
    people = {"a": person("a", 1980), "b": person("b", 1980), "c": person("c", 1983)}
    released, report = kanon.release(people, None)
    assert released == people
    assert report["smallestGroup"] == 1 and report["smallestReleasedGroup"] == 1
    assert report["generalised"] == 0 and report["participants"] == 3


def test_small_groups_get_the_birth_decade_and_zip3_000() -> None:
    people = {
        "a": person("a", 1980),
        "b": person("b", 1980),  # a group of 2: kept
        "c": person("c", 1983, zip3="606"),
        "d": person("d", 1987, zip3="100"),  # → 1980s/000
        "e": person("e", 1955, sex="male"),  # alone even as 1950s/000
    }
    released, report = kanon.release(people, 2)
    from collections import Counter

    # c and d share their level-1 values; e is alone at every level short of the last, so it
    # ends with every released value null, joined (whole) by the smallest other group.
    assert {f: released["e"][f] for f in kanon.QUASI_IDENTIFIERS} == dict.fromkeys(
        kanon.QUASI_IDENTIFIERS
    )
    assert released["e"]["pid"] == "e"
    groups = Counter(kanon.key_of(r) for r in released.values())
    assert min(groups.values()) == report["smallestReleasedGroup"] == 2 and report["satisfied"]
    assert report["smallestGroup"] == 1 and report["suppressed"] == 3
    assert report["levels"] == {"0": 2, "1": 0, "2": 0, "3": 3} or report["levels"] == {
        "0": 0,
        "1": 2,
        "2": 0,
        "3": 3,
    }


def test_fewer_than_k_participants_cannot_satisfy_k_and_the_report_says_so() -> None:
    released, report = kanon.release({"a": person("a", 1980), "b": person("b", 1980)}, 3)
    assert report["smallestReleasedGroup"] == 2 and not report["satisfied"]
    assert report["suppressed"] == 2


def test_country_alone_singles_nobody_out() -> None:
    people = {p: person(p, 1980) for p in "abc"}
    people["c"]["country"] = "IS"
    people["c"]["zip3"] = None
    released, report = kanon.release(people, 3)
    from collections import Counter

    groups = Counter(kanon.key_of(r) for r in released.values())
    assert min(groups.values()) >= 3 and report["satisfied"]


def test_every_group_reaches_k_when_enough_people_share_the_coarse_values() -> None:
    people = {str(i): person(str(i), 1970 + i, zip3=f"{600 + i}") for i in range(6)}
    released, report = kanon.release(people, 3)
    assert report["smallestGroup"] == 1 and report["smallestReleasedGroup"] >= 3
    assert {r["birthYear"] for r in released.values()} == {"1970-1979"}


def test_the_90_plus_group_is_not_split_into_decades() -> None:
    assert kanon.decade("<=1936") == "<=1936" and kanon.decade(1941) == "1940-1949"


def test_production_refuses_the_local_or_a_short_master_key() -> None:
    from pydantic import ValidationError

    from anonymizer.settings import AnonymizerSettings

    base = {"central_dsn": "postgresql://u@h:5432/medsvc", "env": "production",
            "jwt_secret": "j" * 40}  # fmt: skip
    with pytest.raises(ValidationError, match="MEDSVC_PSEUDONYM_KEY"):
        AnonymizerSettings(**base)
    with pytest.raises(ValidationError, match="MEDSVC_PSEUDONYM_KEY"):
        AnonymizerSettings(**base, pseudonym_key="too-short")
    ok = AnonymizerSettings(**base, pseudonym_key="k" * 32)
    assert ok.anonymizer_dsn == "postgresql://u@h:5432/anonymizer"
    assert AnonymizerSettings(central_dsn="postgresql://u@h/x").master_key  # local default


def test_free_text_never_passes_the_allow_list_and_what_is_left_out_is_counted() -> None:
    from collections import Counter

    keys, left = StudyKeys(KEY, "s"), Counter()
    v = deidentify.visit(
        keys, "p", "v", "outpatient; Jane Doe", dt.datetime(2026, 1, 1, tzinfo=UTC), None,
        [{"system": "ICD-10", "code": "Z99 JSmith"}, {"system": "ICD-10", "code": "E１1.9"},
         {"system": "Jane", "code": "E11.9"}, {"system": "SNOMED-CT", "code": "44054006"}, "E11.9"],
        {"heartRate": "70 Jane", "systolic": True, "diastolic": 900, "weightKg": 70.5, "x": 1},
        [{"name": "metformin - pt Jane Doe 555-867-5309", "dose": "500 mg"},
         {"name": "x", "system": "RxNorm", "code": "8609７5"}, {"name": "x", "system": "ATC"},
         {"name": "x", "system": "ATC", "code": "A10BA02"}, ["RxNorm", "1"]],
        left,
    )  # fmt: skip
    assert v["type"] is None
    assert v["diagnoses"] == [{"system": "SNOMED-CT", "code": "44054006"}]
    assert v["vitals"] == {"weightKg": 70.5}
    assert v["medications"] == [{"system": "ATC", "code": "A10BA02"}]
    assert deidentify.left_out_report(left) == {
        "uncodedMedication": 1, "invalidMedicationCode": 3, "invalidDiagnosis": 4,
        "invalidVitals": 4, "invalidVisitType": 1, "invalidSex": 0, "invalidCountry": 0,
        "invalidPostalCode": 0,
    }  # fmt: skip
    p = deidentify.participant(
        keys, "u", dt.date(1980, 1, 1), "female; Jane",
        {"postalCode": "０３６１２", "country": "US"}, 1936, left,
    )  # fmt: skip
    assert (p["sex"], p["zip3"], p["country"]) == (None, None, "US")
    p = deidentify.participant(
        keys, "u", dt.date(1980, 1, 1), "male", {"postalCode": "03612", "country": "us"}, 1936, left
    )
    assert (p["zip3"], p["country"]) == (None, None)
    assert (
        left["invalidSex"] == 1 and left["invalidPostalCode"] == 1 and left["invalidCountry"] == 1
    )
