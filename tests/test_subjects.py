"""Inferring an edit's subject from its prompt (sola.subjects): the proper-name rule, then the first content words."""

from __future__ import annotations

import pytest

from sola.subjects import infer_subject


@pytest.mark.parametrize("prompt, subject", [
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower"),  # an opening article before a name belongs to it
    ("Danielle Darrieux's mother tongue is", "Danielle Darrieux"),  # the possessive is not part of the name
    ("Rob Dyrdek's Fantasy Factory debuted on", "Rob Dyrdek's Fantasy Factory"),  # ... unless a name goes on after it
    ("In Denmark, the language spoken is", "Denmark"),  # an opening preposition is not
    ("What team is Andrew Toney on?", "Andrew Toney"),  # nor a question word, nor a trailing particle
    ("Which constellation is NGC 6604 in?", "NGC 6604"),  # digits count as name words
    ("Which corporation created USS Leedstown (APA-56)?", "USS Leedstown (APA-56)"),  # a bracket the name opened stays
    ("Pink Ribbons, Inc. was developed in", "Pink Ribbons, Inc."),  # a comma joins two name parts; "Inc." keeps its stop
    ("Leonardo da Vinci was born in", "Leonardo da Vinci"),  # particles join name words
    ("The language of The Butcher was", "The Butcher"),  # a capitalised article inside a sentence is a name's
    ("Where is Shmuel HaNavi? It is located in", "Shmuel HaNavi"),  # a sentence after a question starts afresh
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),  # the longest name wins over "The"
])
def test_the_longest_capitalised_name_is_the_subject(prompt, subject):
    assert infer_subject(prompt) == subject
    assert subject in prompt  # written as in the prompt, so its tokens can be found there


@pytest.mark.parametrize("prompt, subject", [
    ("beef bourguignon, that was formulated in", "beef bourguignon"),  # a comma ends the run
    ("application bundle was developed by", "application bundle"),  # an auxiliary ends it
    ("cepelinai, that originated in", "cepelinai"),
    ("What is the capital of", "capital"),  # function words are never part of it
    ("the capital of france is", "france"),  # a relation noun before "of" is not what the prompt is about
    ("the genre played by the rolling stones is", "rolling stones"),
    ("the sky is", "sky"),
    ("the many ancient lost coastal cities are", "many ancient lost coastal"),  # at most four words
])
def test_a_prompt_without_a_name_takes_the_content_words_it_is_about(prompt, subject):
    assert infer_subject(prompt) == subject


@pytest.mark.parametrize("prompt", ["<b>?</b> =>", "what is it?", "it is", "   "])
def test_a_prompt_without_a_content_word_has_no_subject(prompt):
    assert infer_subject(prompt) is None
