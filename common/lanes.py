"""Priority lanes: their names, and the one rule by which the dispatcher (at admission) and
the workers (per batch) share places between them (docs/scheduling.md, "Priority lanes").

The rule: higher lanes are served first, but each lower lane that has work waiting earns
`share` of every round's places as credit, and the whole places of its credit are kept for
it. So with share 1/8 and a batch of 32, normal and low each keep at least 4 places of every
batch while they have requests waiting, and high takes the rest (24 with both waiting, 28
with one); what a lane leaves unused goes to the others. With fewer places than 1/share
(a batch of 1, one free place at admission), the credit builds up over rounds: a waiting
lower lane is served at least once every 1/share rounds. Credit is not banked by a lane
with nothing waiting, so an idle lane cannot come back with a burst.
"""

from collections.abc import Mapping

HIGH, NORMAL, LOW = "high", "normal", "low"
# In the order they are served.
LANES = (HIGH, NORMAL, LOW)
# The most of one round a lower lane's credit can keep: at 1/3 each of the two lower lanes
# keeps a third and high still takes at least the last third, so every lane is served in
# every round where all three wait.
MAX_SHARE = 1 / 3


def lane_places(
    waiting: Mapping[str, int],
    places: int,
    *,
    share: float,
    credit: Mapping[str, float] | None = None,
) -> tuple[dict[str, int], dict[str, float]]:
    """How many of `places` each lane takes (at most what it has waiting), and the lower
    lanes' credit to carry into the next round (the module's rule)."""
    credit = credit or {}
    earned: dict[str, float] = {}
    kept: dict[str, int] = dict.fromkeys(LANES, 0)
    for lane in LANES[1:]:
        if waiting.get(lane, 0) > 0:
            earned[lane] = credit.get(lane, 0.0) + share * places
            kept[lane] = min(int(earned[lane]), waiting[lane])
    taken = dict.fromkeys(LANES, 0)
    free = places
    for index, lane in enumerate(LANES):
        below = sum(kept[lower] for lower in LANES[index + 1 :])
        taken[lane] = max(0, min(waiting.get(lane, 0), free - below))
        free -= taken[lane]
    # A lane denied part of its kept places (their sum exceeded a small round) keeps that
    # part as credit, at most one round's worth: it is served first next time.
    carried = {
        lane: min(max(0.0, earned[lane] - taken[lane]), max(1.0, share * places)) for lane in earned
    }
    return taken, carried
