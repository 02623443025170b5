"""Who sees what (predictions/selectors.py): jobs and batches for an anonymous visitor, their
owner, another user, and staff without and with the admin's model permissions; by id, the
things of no one too."""

import pytest
from django.contrib.auth.models import AnonymousUser, Permission

from predictions import selectors
from tests.factories import BatchFactory, JobFactory, UserFactory, staff_user

pytestmark = [pytest.mark.domain, pytest.mark.django_db]


@pytest.fixture
def things() -> dict:
    """A job and a batch of alice's, of bob's and of no one."""
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    return {
        "alice": alice,
        "bob": bob,
        "jobs": {
            "alice": JobFactory(owner=alice),
            "bob": JobFactory(owner=bob),
            "no one": JobFactory(owner=None),
        },
        "batches": {
            "alice": BatchFactory(owner=alice),
            "bob": BatchFactory(owner=bob),
            "no one": BatchFactory(owner=None),
        },
    }


def viewer(things: dict, who: str):
    if who == "anonymous":
        return AnonymousUser()
    if who in ("alice", "bob"):
        return things[who]
    return staff_user(*STAFF[who])


# Staff users by the permissions of the predictions app they hold.
STAFF = {
    "staff without permissions": (),
    "staff who may view jobs": ("view_job",),
    "staff who may change jobs": ("change_job",),
    "staff who may view batches only": ("view_batch",),
    "staff who may view batches and jobs": ("view_batch", "view_job"),
}
EVERYONE = {"alice", "bob", "no one"}


@pytest.mark.parametrize(
    ("who", "listed", "by_id"),
    [
        ("anonymous", set(), {"no one"}),
        ("alice", {"alice"}, {"alice", "no one"}),
        ("bob", {"bob"}, {"bob", "no one"}),
        ("staff without permissions", set(), {"no one"}),
        ("staff who may view jobs", EVERYONE, EVERYONE),
        # The change permission includes viewing, as in the admin.
        ("staff who may change jobs", EVERYONE, EVERYONE),
    ],
)
def test_each_user_sees_the_jobs_the_rules_give_them(things, who, listed, by_id):
    user = viewer(things, who)
    jobs = things["jobs"]
    assert set(selectors.visible_jobs(user, by_id=False)) == {jobs[owner] for owner in listed}
    assert set(selectors.visible_jobs(user, by_id=True)) == {jobs[owner] for owner in by_id}


@pytest.mark.parametrize(
    ("who", "listed", "by_id"),
    [
        ("anonymous", set(), {"no one"}),
        ("alice", {"alice"}, {"alice", "no one"}),
        ("bob", {"bob"}, {"bob", "no one"}),
        ("staff without permissions", set(), {"no one"}),
        # Another user's batch shows its jobs: seeing it takes the view permission on both.
        ("staff who may view batches only", set(), {"no one"}),
        ("staff who may view jobs", set(), {"no one"}),
        ("staff who may view batches and jobs", EVERYONE, EVERYONE),
    ],
)
def test_each_user_sees_the_batches_the_rules_give_them(things, who, listed, by_id):
    user = viewer(things, who)
    batches = things["batches"]
    assert set(selectors.visible_batches(user, by_id=False)) == {batches[o] for o in listed}
    assert set(selectors.visible_batches(user, by_id=True)) == {batches[o] for o in by_id}


def test_staff_may_takes_the_staff_flag_and_the_model_permission():
    plain = UserFactory()
    plain.user_permissions.add(
        Permission.objects.get(content_type__app_label="predictions", codename="view_job")
    )
    viewer_of_jobs = staff_user("view_job")
    changer_of_jobs = staff_user("change_job")
    inactive = staff_user("view_job", is_active=False)
    superuser = UserFactory(is_staff=True, is_superuser=True)

    assert not selectors.staff_may(AnonymousUser(), "view", "job")
    assert not selectors.staff_may(plain, "view", "job")  # the permission without the flag
    assert not selectors.staff_may(staff_user(), "view", "job")  # the flag without it
    assert not selectors.staff_may(inactive, "view", "job")
    assert selectors.staff_may(viewer_of_jobs, "view", "job")
    assert not selectors.staff_may(viewer_of_jobs, "change", "job")
    assert not selectors.staff_may(viewer_of_jobs, "view", "batch")
    assert selectors.staff_may(changer_of_jobs, "view", "job")
    assert not selectors.staff_may(changer_of_jobs, "delete", "job")
    assert selectors.staff_may(superuser, "delete", "batch")


def test_a_batch_of_no_one_takes_anyones_uploads_and_a_users_only_theirs(things):
    alice, bob = things["alice"], things["bob"]
    batches = things["batches"]
    assert selectors.usable_batch(batches["no one"].pk, AnonymousUser()) == batches["no one"]
    assert selectors.usable_batch(batches["no one"].pk, bob) == batches["no one"]
    assert selectors.usable_batch(batches["alice"].pk, alice) == batches["alice"]
    assert selectors.usable_batch(batches["alice"].pk, bob) is None
    assert selectors.usable_batch(batches["alice"].pk, AnonymousUser()) is None
    # Not even staff who may see it: an upload into it would be made as alice.
    assert selectors.usable_batch(batches["alice"].pk, staff_user("view_batch", "view_job")) is None


def test_only_the_owner_or_staff_with_the_permission_may_act_on_a_job(things):
    job = things["jobs"]["alice"]
    assert selectors.may_act_on(job, things["alice"], "change")
    assert selectors.may_act_on(job, things["alice"], "delete")
    assert not selectors.may_act_on(job, things["bob"], "change")
    assert not selectors.may_act_on(job, AnonymousUser(), "change")
    assert not selectors.may_act_on(job, staff_user("view_job"), "change")
    assert selectors.may_act_on(job, staff_user("change_job"), "change")
    assert not selectors.may_act_on(job, staff_user("change_job"), "delete")
    # Holding the id of a job of no one lets one see it, never act on it.
    assert not selectors.may_act_on(things["jobs"]["no one"], things["bob"], "delete")
