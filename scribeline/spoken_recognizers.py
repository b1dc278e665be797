"""Presidio recognizers for personal data as whisper writes speech (the logic is in ``spoken_pii``).

Imported only where Presidio's analyzer runs (``pii.analyzer``, its own process).
"""

from __future__ import annotations

from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult

from scribeline.spoken_pii import EMAIL_CONTEXT, SPOKEN_EMAIL, classify, digit_runs
from scribeline.spoken_pii import EMAIL_DOT as _DOT, EMAIL_NAME as _NAME, EMAIL_TLD as _TLD


class SpokenNumberRecognizer(EntityRecognizer):
    """Numbers dictated in pieces, named by their context (see ``classify``)."""

    ENTITIES = ["PHONE_NUMBER", "US_SSN", "CREDIT_CARD"]

    def __init__(self):
        super().__init__(supported_entities=self.ENTITIES, name="SpokenNumberRecognizer", supported_language="en")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for run in digit_runs(text):
            entity = classify(text, run)
            if entity is None:
                continue
            if entity not in entities:  # a caller that asks for phone numbers only still gets them redacted
                entity = "PHONE_NUMBER" if "PHONE_NUMBER" in entities else None
            if entity:
                results.append(RecognizerResult(entity, run.start, run.end, 0.9, recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.name, RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return results


def spoken_email_recognizer() -> PatternRecognizer:
    """E-mail addresses as whisper writes them when they are spoken."""
    patterns = [
        Pattern("spoken", SPOKEN_EMAIL, 0.85),  # maria dot patel at mailpost dot org
        # "at" heard as "to": mario.pertella to mailpost.org (the name must hold a dot)
        Pattern("spoken to", rf"\b{_NAME}(?:{_DOT}{_NAME})+\s+to\s+{_NAME}(?:{_DOT}{_NAME})*{_DOT}{_TLD}\b", 0.7),
        # run together: Maria.patelatmailpost.org
        Pattern("name.nameatdomain", rf"\b{_NAME}\.[a-z0-9_-]*at[a-z0-9-]+(?:\.[a-z0-9-]+)*\.{_TLD}\b", 0.7),
        # Robert.Walker.com (not www.example.com)
        Pattern("name.name.tld", rf"\b(?!www\.){_NAME}\.{_NAME}\.{_TLD}\b", 0.5),
        # patellatmailpost.org, Robert.com: only where the words before speak of mail
        Pattern("nameatdomain", rf"\b[a-z0-9_-]+at[a-z0-9-]+\.{_TLD}\b", 0.3),
        Pattern("name.tld", rf"\b{_NAME}\.{_TLD}\b", 0.2),
    ]
    return PatternRecognizer(supported_entity="EMAIL_ADDRESS", name="SpokenEmailRecognizer", supported_language="en",
                             patterns=patterns, context=EMAIL_CONTEXT)
