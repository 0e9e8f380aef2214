"""What a research extract may release (API.md "Studies and anonymized data"), against the real
stack through nginx: closed values only, k over what the consumer holds, the manifest.

The consumer's holdings are recomputed here from the downloads alone, as a research team
would: a ``withdrawal`` drops a pid, a ``participant`` record replaces the one held.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from anonymizer import deidentify
from tests.e2e.api import Api, unique
from tests.e2e.studies_client import Researcher, by_kind, consent, keys, patient_on_shard, withdraw

RELEASED = ("birthYear", "sex", "zip3", "country")


@pytest.fixture
def clinician(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("dr.hibbert", "clinician"))


@pytest.fixture
def researcher(http, stack, token) -> Researcher:
    return Researcher(Api(http, stack.base_url, token("rita.research", "researcher")))


# -- closed values at the API ------------------------------------------------------------------


async def test_codes_and_us_postal_codes_without_their_form_are_refused_and_change_nothing(
    clinician: Api, stack
) -> None:
    p = await patient_on_shard(
        clinician, stack, 0, address={"postalCode": "62701", "country": "US"}
    )
    name = p["userName"]
    visits = f"/v1/users/{name}/visits"
    bad_visits = [
        ({"diagnoses": [{"system": "ICD-10", "code": "Z99 JSmith"}]}, "diagnoses.0.code"),
        ({"diagnoses": [{"system": "ICD-10", "code": "E１1.9"}]}, "diagnoses.0.code"),
        ({"diagnoses": [{"system": "SNOMED-CT", "code": "٤٤٠٥٤٠٠٦"}]}, "diagnoses.0.code"),
        ({"diagnoses": [{"system": "ICD-9", "code": "250.00"}]}, "diagnoses.0.system"),
        (
            {"medications": [{"name": "m", "system": "RxNorm", "code": "86097５"}]},
            "medications.0.code",
        ),
        ({"medications": [{"name": "m", "system": "ATC", "code": "A10BA0"}]}, "medications.0.code"),
        ({"medications": [{"name": "m", "code": "860975"}]}, "medications.0.code"),
        (
            {"medications": [{"name": "m", "system": "Jane Doe", "code": "1"}]},
            "medications.0.system",
        ),
    ]
    for fields, field in bad_visits:
        reply = await clinician.call(
            "POST", visits, {"type": "outpatient", "startedAt": "2026-01-01T00:00:00Z"} | fields
        )
        assert reply.status == 422 and reply.problem, (fields, reply.body)
        assert field in [e["field"] for e in reply.body["errors"]], (fields, reply.body)
    listed = await clinician.call("GET", visits)
    assert listed.body["items"] == []
    good = await clinician.create_visit(
        name,
        diagnoses=[
            {"system": "ICD-10-CM", "code": "E11.65"},
            {"system": "SNOMED-CT", "code": "44054006"},
        ],
        medications=[
            {"name": "m", "system": "ATC", "code": "A10BA02"},
            {"name": "m", "system": "RxNorm", "code": "860975"},
            {"name": "uncoded"},
        ],
    )
    assert good["medications"][0]["code"] == "A10BA02"

    for postal in ("０３６１２", "03612 ", "0361", "03612-12", "٠٣٦١٢", "036121234", "03612\n"):
        reply = await clinician.call(
            "PATCH", f"/v1/users/{name}", {"address": {"postalCode": postal}}
        )
        assert reply.status == 422 and reply.body["errors"][0]["field"] == "address.postalCode", (
            postal
        )
        created = await clinician.call(
            "POST",
            "/v1/users",
            {
                "userName": unique("pat"),
                "role": "patient",
                "givenName": "A",
                "familyName": "B",
                "birthDate": "1980-01-01",
                "address": {"postalCode": postal, "country": "US"},
            },
        )
        assert created.status == 422, postal
    now = await clinician.call("GET", f"/v1/users/{name}")
    assert (
        now.body["address"] == {"postalCode": "62701", "country": "US"} and now.body["version"] == 1
    )
    ok = await clinician.call(
        "PATCH", f"/v1/users/{name}", {"address": {"postalCode": "03612-1234"}}
    )
    assert ok.status == 200
    # Outside the US a postal code is the country's own business.
    abroad = await clinician.call(
        "PATCH", f"/v1/users/{name}", {"address": {"postalCode": "SW1A 1AA", "country": "GB"}}
    )
    assert abroad.status == 200


# -- planted identifiers never leave -----------------------------------------------------------

_CYRILLIC = str.maketrans({"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "i": "і"})
_LATIN = str.maketrans("аеорсхі", "aeopcxi")
_DIGITS = ["0123456789", "０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९"]


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@st.composite
def disguised(
    draw: st.DrawFn,
    plain: str,
    forms: tuple[str, ...] = ("plain", "upper", "cyrillic", "fullwidth", "title"),
) -> str:
    """``plain`` as a person might type it: upper case, look-alike letters, full-width forms."""
    how = draw(st.sampled_from(forms))
    return {
        "plain": plain,
        "upper": plain.upper(),
        "cyrillic": plain.translate(_CYRILLIC),
        "fullwidth": _fullwidth(plain),
        "title": plain.title(),
    }[how]


@st.composite
def digits(draw: st.DrawFn, n: int) -> str:
    script = draw(st.sampled_from(_DIGITS))
    return "".join(script[draw(st.integers(0, 9))] for _ in range(n))


@st.composite
def person(draw: st.DrawFn) -> dict[str, str]:
    """Identifiers of one person; each is distinctive (no output could contain it by chance)."""
    word = st.text(alphabet=string.ascii_lowercase, min_size=5, max_size=9)
    given, family, street, city = (f"zq{draw(word)}" for _ in range(4))
    year, month, day = (
        draw(st.integers(1930, 2005)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 28)),
    )
    return {
        "given": draw(disguised(given)), "family": draw(disguised(family)),
        # The email's "@" and the phone's digits must stay ASCII (the API's forms for them);
        # the same values typed into free text may use any digits.
        "email": draw(
            disguised(f"{given}.{family}@{city}-mail.example", ("plain", "upper", "cyrillic"))
        ),
        "phone": f"+1-555-{draw(st.integers(100, 999))}-{draw(st.integers(1000, 9999))}",
        "typedPhone": f"+1-555-{draw(digits(3))}-{draw(digits(4))}",
        "line": draw(disguised(f"{draw(st.integers(1, 9999))} {street} street")),
        "city": draw(disguised(city)), "region": draw(disguised(f"{city}shire")),
        "date": f"{year:04d}-{month:02d}-{day:02d}",
        "foreignPostal": draw(disguised(f"{street[:4]} {draw(digits(3))}")),
    }  # fmt: skip


def normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _shard_dsn(stack: Any, user_name: str) -> str:
    return stack.shard_map.shard(stack.shard_map.shard_id_for(user_name)).postgres


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)  # no shrinking: each example is a run
@given(people=st.lists(person(), min_size=2, max_size=3))
async def test_planted_identifiers_appear_nowhere_in_any_normalisation(
    stack, token, people
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        clinician = Api(http, stack.base_url, token("dr.zqplanted", "clinician"))
        researcher = Researcher(Api(http, stack.base_url, token("rita.research", "researcher")))
        study = await researcher.create_study()
        planted: list[str] = ["dr.zqplanted"]
        rows: list[tuple[str, str]] = []
        for i, who in enumerate(people):
            abroad = i % 2 == 1
            address = {"line": who["line"], "city": who["city"], "region": who["region"],
                       "postalCode": who["foreignPostal"] if abroad else "62701",
                       "country": "IS" if abroad else "US"}  # fmt: skip
            p = await patient_on_shard(
                clinician, stack, i % 2, givenName=who["given"], familyName=who["family"],
                email=who["email"], phone=who["phone"], birthDate=who["date"], address=address,
            )  # fmt: skip
            name = p["userName"]
            free = (
                f"{who['given']} {who['family']} {who['phone']} {who['typedPhone']}"
                f" born {who['date']} {name}"
            )
            visit = await clinician.create_visit(
                name, reason=f"seen {free}", notes=f"{free} {who['email']} {who['line']}",
                diagnoses=[{"system": "ICD-10", "code": "E11.9", "display": free}],
                medications=[{"name": f"metformin - pt {free}", "dose": who["phone"],
                              "frequency": who["city"]},
                             {"name": free, "dose": free, "system": "RxNorm", "code": "860975"}],
            )  # fmt: skip
            vid = visit["visitId"]
            patched = await clinician.call(
                "PATCH", f"/v1/users/{name}/visits/{vid}", {"notes": f"{free} visit {vid}"}
            )
            assert patched.status == 200, patched.body
            # Rows written before the API checked codes and postal codes: straight into the shard.
            conn = await asyncpg.connect(_shard_dsn(stack, name))
            try:
                await conn.execute(
                    "SELECT set_config('medsvc.actor', 'dr.zqplanted', false),"
                    " set_config('medsvc.source', 'e2e/old-rows', false)"
                )
                await conn.execute(
                    """UPDATE visits SET diagnoses = diagnoses || $2::jsonb,
                                         medications = medications || $3::jsonb
                       WHERE visit_id = $1::uuid""",
                    vid,
                    orjson.dumps([{"system": "ICD-10", "code": f"Z99 {who['family']}"},
                                  {"system": who["given"], "code": "E11.9"}]).decode(),
                    orjson.dumps([
                        {"name": "x", "system": "RxNorm", "code": _fullwidth(who["phone"][-4:])},
                        {"name": "x", "system": "ATC", "code": who["given"]},
                    ]).decode(),
                )  # fmt: skip
                if not abroad:
                    await conn.execute(
                        """UPDATE users
                           SET address = address || jsonb_build_object('postalCode', $2::text)
                           WHERE user_name = $1""",
                        name, f"０３６{who['phone'][-2:]}",
                    )  # fmt: skip
            finally:
                await conn.close()
            await consent(clinician, name, study)
            planted += [name, vid, free, *who.values()]
            rows.append((name, vid))

        run, records = await researcher.run(study)
        raw, _ = await researcher.records(study, run["runId"])
        # Pseudonyms, hashes and the key version are hex: blanked, so nothing matches by chance.
        out = re.sub(r"[0-9a-f]{16,}", "<hex>", normal(raw.decode() + orjson.dumps(run).decode()))
        for value in planted:
            bare = normal(value).translate(str.maketrans("", "", " -+.@"))
            for form in {normal(value), bare if re.search(r"[^\W\d]", bare) else ""}:
                if len(form) >= 5:
                    assert form not in out, f"planted {value!r} found in the release"
        # The letters-only cores too (a look-alike swapped back would show as its Latin form).
        for who in people:
            for key in ("given", "family", "city"):
                core = normal(who[key]).translate(_LATIN)
                assert core not in out, core
        assert len(by_kind(records)["participant"]) == len(people)
        assert all(r["zip3"] is None for r in by_kind(records)["participant"]), records
        for visit in by_kind(records)["visit"]:
            assert visit["diagnoses"] == [{"system": "ICD-10", "code": "E11.9"}]
            assert visit["medications"] == [{"system": "RxNorm", "code": "860975"}]
        await same_as_the_reference(stack, study, records, [(p, v) for p, v in rows])
        left = run["manifest"]["leftOut"]
        assert left["invalidDiagnosis"] == 2 * len(people) and left[
            "invalidMedicationCode"
        ] == 2 * len(people)
        assert left["uncodedMedication"] == len(people)


async def same_as_the_reference(
    stack: Any, study: str, records: list[dict], visits: list[tuple[str, str]]
) -> None:
    """Each released visit is what anonymizer.deidentify.visit makes of its stored row (the run
    has the shard build part of each line: the two must agree)."""
    k = keys(study)
    released = {r["vid"]: r for r in by_kind(records)["visit"]}
    for user_name, visit_id in visits:
        conn = await asyncpg.connect(_shard_dsn(stack, user_name))
        try:
            row = await conn.fetchrow(
                """SELECT type, started_at, ended_at, diagnoses::text, vitals::text,
                          medications::text FROM visits WHERE visit_id = $1::uuid""",
                visit_id,
            )
        finally:
            await conn.close()
        loads = lambda t: None if t is None else orjson.loads(t)  # noqa: E731
        expected = deidentify.visit(
            k, k.pid(user_name), visit_id, row["type"], row["started_at"], row["ended_at"],
            loads(row["diagnoses"]), loads(row["vitals"]), loads(row["medications"]),
        )  # fmt: skip
        assert released[k.vid(visit_id)] == expected


# Text with what a run's COPY from the shard escapes (backslash, tab, newline...), a quote and
# COPY's NULL marker: dropped, and the values around it read as stored.
_COPY_ESCAPED = 'Jane "JD" Doe\tC:\\notes\\N\nline\r2 \\N'


async def test_old_rows_with_values_out_of_their_sets_release_only_what_passes(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    p = await patient_on_shard(clinician, stack, 1)
    name = p["userName"]
    odd = await clinician.create_visit(
        name, startedAt="2026-03-01T10:00:00Z", endedAt="2026-03-01T10:02:30Z"
    )
    plain = await clinician.create_visit(
        name,
        startedAt="2025-12-31T23:30:00-02:00",
        vitals={
            "heightCm": 168.5,
            "weightKg": 70,
            "systolic": 120,
            "diastolic": 80,
            "heartRate": 61,
            "temperatureC": 36.6,
        },
    )
    conn = await asyncpg.connect(_shard_dsn(stack, name))
    try:
        await conn.execute(
            "SELECT set_config('medsvc.actor', 'dr.hibbert', false),"
            " set_config('medsvc.source', 'e2e/old-rows', false)"
        )
        await conn.execute(
            """UPDATE visits SET type = 'house call of Jane', vitals = $2::jsonb,
                      diagnoses = $3::jsonb, medications = $4::jsonb WHERE visit_id = $1::uuid""",
            odd["visitId"],
            orjson.dumps({"heartRate": "70 Jane", "systolic": True, "diastolic": 900,
                          "weightKg": 70.25, "pulse": 60, "temperatureC": None}).decode(),
            orjson.dumps([{"system": "SNOMED-CT", "code": "44054006", "display": _COPY_ESCAPED},
                          "E11.9", {"system": "ICD-10-CM", "code": "E11.65\n"},
                          {"code": "E11.9"}]).decode(),
            orjson.dumps([{"name": _COPY_ESCAPED}, {"name": "b", "system": None, "code": None},
                          {"system": "ATC", "code": "A10BA02", "name": "c"},
                          {"system": "RxNorm", "code": "12345678901"}]).decode(),
        )  # fmt: skip
    finally:
        await conn.close()
    await consent(clinician, name, study)
    run, records = await researcher.run(study)
    await same_as_the_reference(
        stack, study, records, [(name, odd["visitId"]), (name, plain["visitId"])]
    )
    k = keys(study)
    got = {r["vid"]: r for r in by_kind(records)["visit"]}
    assert got[k.vid(odd["visitId"])] | {"pid": "", "vid": ""} == {
        "kind": "visit",
        "pid": "",
        "vid": "",
        "year": 2026,
        "type": None,
        "durationMinutes": 3,
        "diagnoses": [{"system": "SNOMED-CT", "code": "44054006"}],
        "vitals": {"weightKg": 70.25},
        "medications": [{"system": "ATC", "code": "A10BA02"}],
    }
    assert got[k.vid(plain["visitId"])]["year"] == 2026  # the UTC year
    assert run["manifest"]["leftOut"] | {} == {
        "uncodedMedication": 2,
        "invalidMedicationCode": 1,
        "invalidDiagnosis": 3,
        "invalidVitals": 4,
        "invalidVisitType": 1,
        "invalidSex": 0,
        "invalidCountry": 0,
        "invalidPostalCode": 0,
    }


# -- k over what the consumer holds ------------------------------------------------------------


def hold(holdings: dict[str, dict], records: list[dict]) -> None:
    """Apply one run's download to the consumer's holdings (pid → participant record)."""
    for r in records:
        if r["kind"] == "withdrawal":
            holdings.pop(r["pid"], None)
        elif r["kind"] == "participant":
            holdings[r["pid"]] = r


def smallest_group(holdings: dict[str, dict]) -> int:
    groups = Counter(tuple(r[f] for f in RELEASED) for r in holdings.values())
    return min(groups.values())


async def test_every_group_the_consumer_holds_has_k_members_after_every_run(
    clinician: Api, researcher: Researcher, stack
) -> None:
    k = 3
    study = await researcher.create_study(k=k)
    pk = keys(study)

    async def patient(shard: int, born: str, sex: str, postal: str | None, country: str) -> str:
        address = {"country": country} | ({"postalCode": postal} if postal else {})
        p = await patient_on_shard(
            clinician, stack, shard, birthDate=born, sex=sex, address=address
        )
        await clinician.create_visit(p["userName"])
        await consent(clinician, p["userName"], study)
        return p["userName"]

    usual = [
        await patient(i % 2, f"1980-0{i + 1}-01", "female", f"6270{i}", "US") for i in range(4)
    ]
    # Each singled out by one released value: a country, a rare sex, a restricted zip3.
    icelander = await patient(0, "1980-05-05", "female", None, "IS")
    other = await patient(1, "1980-06-06", "other", "62709", "US")
    remote = await patient(0, "1980-07-07", "female", "03601", "US")

    holdings: dict[str, dict] = {}
    reports = []

    async def run_and_check() -> list[dict]:
        run, records = await researcher.run(study)
        hold(holdings, records)
        assert smallest_group(holdings) >= k, holdings
        report = run["manifest"]["kAnonymity"]
        assert report["satisfied"] and report["smallestReleasedGroup"] == smallest_group(holdings)
        assert report["participants"] == len(holdings)
        reports.append(report)
        return records

    await run_and_check()
    assert set(holdings) == {pk.pid(u) for u in (*usual, icelander, other, remote)}
    assert holdings[pk.pid(icelander)]["country"] is None  # the only IS: not released as IS

    # A second Icelander and a third: now a group of their own can be released.
    more_is = [await patient(i % 2, "1980-08-08", "female", None, "IS") for i in range(2)]
    await run_and_check()
    assert holdings[pk.pid(icelander)]["country"] == "IS"
    assert {holdings[pk.pid(u)]["country"] for u in more_is} == {"IS"}

    # Withdrawals shrink the Icelanders' group below k after it was released: the ones left
    # are re-emitted, generalised, in the same run.
    for u in more_is:
        await withdraw(clinician, u, study)
    records = await run_and_check()
    assert {r["pid"] for r in by_kind(records)["withdrawal"]} == {pk.pid(u) for u in more_is}
    assert pk.pid(icelander) in {r["pid"] for r in by_kind(records)["participant"]}
    assert holdings[pk.pid(icelander)]["country"] is None
    assert reports[-1]["reemitted"] >= 1

    # Withdrawn and consenting again between two runs: the withdrawal comes first, then the
    # participant record and the whole history again.
    await withdraw(clinician, usual[0], study)
    await consent(clinician, usual[0], study)
    records = await run_and_check()
    mine = [r["kind"] for r in records if r["pid"] == pk.pid(usual[0])]
    assert mine == ["withdrawal", "participant", "visit"], mine
    assert pk.pid(usual[0]) in holdings


# -- the manifest --------------------------------------------------------------------------------


async def test_the_manifest_describes_the_download_and_every_download_is_the_same(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    for shard in (0, 1):
        p = await patient_on_shard(clinician, stack, shard)
        for _ in range(3):
            await clinician.create_visit(
                p["userName"],
                medications=[{"name": "a"}, {"name": "b", "system": "RxNorm", "code": "860975"}],
            )
        await consent(clinician, p["userName"], study)
    run, records = await researcher.run(study)
    manifest = run["manifest"]
    assert set(manifest) == {
        "policyVersion",
        "keyVersion",
        "watermarks",
        "counts",
        "leftOut",
        "kAnonymity",
        "recordsSha256",
        "recordsBytes",
    }
    assert manifest["policyVersion"] == run["policyVersion"]
    assert set(manifest["watermarks"]) == {"0", "1"}
    assert manifest["counts"] == run["counts"] == {"participant": 2, "visit": 6, "withdrawal": 0}
    assert manifest["leftOut"]["uncodedMedication"] == 6
    first, _ = await researcher.records(study, run["runId"])
    second, _ = await researcher.records(study, run["runId"])
    assert first == second
    assert hashlib.sha256(first).hexdigest() == manifest["recordsSha256"]
    assert len(first) == manifest["recordsBytes"]
    # The run as listed and as shown carries the same manifest.
    listed = await researcher.api.call("GET", f"/v1/studies/{study}/runs")
    assert listed.body["items"][0]["manifest"] == manifest
    # An empty run: an empty body, and its manifest says so.
    empty, records = await researcher.run(study)
    assert records == [] and empty["manifest"]["recordsBytes"] == 0
    assert empty["manifest"]["recordsSha256"] == hashlib.sha256(b"").hexdigest()
    assert empty["manifest"]["keyVersion"] == manifest["keyVersion"]
