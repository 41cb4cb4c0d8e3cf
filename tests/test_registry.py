"""The one registry mechanism: decorator and call registration, lookup errors, replacement."""

import pytest

from landmark_graph.registry import Registry


def test_decorator_and_call_register_in_order():
    things = Registry("thing")

    @things.register("b")
    def b():
        return "b"

    assert b() == "b"  # the decorator returns the function itself
    assert things.register("a", 1) == 1
    assert things.names() == ["b", "a"] and list(things) == ["b", "a"] and len(things) == 2
    assert things.get("b") is b and things["a"] == 1 and things.items() == [("b", b), ("a", 1)]
    assert "a" in things and "c" not in things and ["unhashable"] not in things


def test_unknown_name_is_one_line_listing_the_choices():
    things = Registry("thing")
    things.register("x", 1)
    things.register("y", 2)
    with pytest.raises(ValueError, match=r"^unknown thing 'z'; registered: x, y$"):
        things.get("z")
    with pytest.raises(ValueError, match="unknown thing"):
        things[["unhashable"]]


def test_names_are_taken_until_overwritten_or_unregistered():
    things = Registry("thing")
    things.register("x", 1)
    with pytest.raises(ValueError, match="thing 'x' is already registered; pass overwrite=True"):
        things.register("x", 2)
    things.register("x", 3, overwrite=True)
    assert things.get("x") == 3
    things.unregister("x")
    assert "x" not in things
    with pytest.raises(ValueError, match="unknown thing 'x'"):
        things.unregister("x")
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="thing name must be a non-empty str"):
            things.register(bad, 1)
