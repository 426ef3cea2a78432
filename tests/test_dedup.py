from relay.ingress.dedup import RecentIds


def test_remembers_up_to_capacity_and_forgets_the_oldest() -> None:
    """Past capacity the oldest id goes; a re-added id becomes the newest."""
    recent = RecentIds(2)
    recent.add("a")
    recent.add("b")
    recent.add("a")
    recent.add("c")
    assert "a" in recent
    assert "c" in recent
    assert "b" not in recent
    assert len(recent) == 2


def test_zero_capacity_remembers_nothing() -> None:
    """A window of 0 turns the shortcut off."""
    recent = RecentIds(0)
    recent.add("a")
    assert "a" not in recent
