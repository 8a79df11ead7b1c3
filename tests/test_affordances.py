"""models.affordances: the one rule that matches affordance names, and the message for an unknown one."""

from __future__ import annotations

from models.affordances import class_index, phrase_key, unknown_affordance_message

CLASSES = ["cut_with", "hold", "sit_on", "drink_with"]


def test_case_underscores_and_spaces_do_not_matter() -> None:
    assert phrase_key("  Cut_With ") == phrase_key("cut  with") == "cut with"
    for query in ("cut_with", "Cut With", "cut  with", "CUT_WITH"):
        assert class_index(query, CLASSES) == 0
    assert class_index("sit on", CLASSES) == 2


def test_a_phrase_is_no_class_and_the_message_names_the_closest() -> None:
    assert class_index("cut", CLASSES) is None and class_index("slice something", CLASSES) is None
    message = unknown_affordance_message("drinkwith", CLASSES)
    assert "Did you mean 'drink_with'?" in message
    assert "This model knows 4: cut_with, hold, sit_on, drink_with" in message
