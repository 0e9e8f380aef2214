"""``GET /v1/users/{userName}/studies`` through nginx: a patient sees the studies they are in."""

from __future__ import annotations

from tests.e2e.api import Api
from tests.e2e.studies_client import Researcher, consent, patient_on_shard, study_id, withdraw


async def test_a_patient_sees_the_studies_they_take_part_in(
    http, stack, admin_token, token
) -> None:
    admin = Api(http, stack.base_url, admin_token)
    clinician = Api(http, stack.base_url, token("dr.hibbert", "clinician"))
    researcher = Researcher(Api(http, stack.base_url, token("rita.research", "researcher")))
    first, second = sorted([study_id("taken"), study_id("taken")])
    for study in (first, second):
        await researcher.create_study(studyId=study)
    # On the second shard, so the gateway's routing to the owner is part of what is shown.
    name = (await patient_on_shard(admin, stack, 1))["userName"]
    me = Api(http, stack.base_url, token(name, "patient"))
    await consent(me, name, first)
    await consent(clinician, name, second)
    await withdraw(me, name, first)
    await consent(me, name, first)

    listed = await me.call("GET", f"/v1/users/{name}/studies")
    assert listed.status == 200, listed.body
    assert [i["studyId"] for i in listed.body["items"]] == [first, second]
    assert set(listed.body["items"][0]) == {"studyId", "consentedAt"}
    assert listed.body["nextCursor"] is None
    assert (await clinician.call("GET", f"/v1/users/{name}/studies")).body == listed.body

    stranger = Api(http, stack.base_url, token("someone.else", "patient"))
    assert (await stranger.call("GET", f"/v1/users/{name}/studies")).status == 403
    assert (await researcher.api.call("GET", f"/v1/users/{name}/studies")).status == 403
