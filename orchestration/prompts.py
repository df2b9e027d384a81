"""The prompts of each orchestration step: short, with the output format spelled out.

Steps that write an answer keep the client's conversation (its system prompt included)
and add one user turn with the instruction, so the answer stays in the client's voice.
Judging steps (critique, validation) see the conversation as a transcript instead: the
judge is not the assistant and must not continue the chat.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.protocol import Message

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def transcript(messages: Sequence[Message]) -> str:
    return "\n\n".join(f"{_ROLE_NAMES.get(m.role, m.role.title())}: {m.content}" for m in messages)


def _numbered(label: str, texts: Sequence[str]) -> str:
    return "\n\n".join(f"{label} {n}:\n{text.strip()}" for n, text in enumerate(texts, start=1))


def _follow_up(conversation: Sequence[Message], previous: str | None, instruction: str) -> list[Message]:
    turns = list(conversation)
    if previous is not None:
        turns.append(Message(role="assistant", content=previous))
    turns.append(Message(role="user", content=instruction))
    return turns


def _judge(system: str, conversation: Sequence[Message], *, label: str, answer: str, task: str) -> list[Message]:
    """A reviewer's prompt: the conversation, the answer under review, what to write back."""
    return [
        Message(role="system", content=system),
        Message(
            role="user",
            content=f"Conversation:\n{transcript(conversation)}\n\n{label}:\n{answer.strip()}\n\n{task}",
        ),
    ]


def critique(conversation: Sequence[Message], answer: str) -> list[Message]:
    return _judge(
        "You are a strict reviewer. You judge answers; you do not rewrite them.",
        conversation,
        label="Answer to review",
        answer=answer,
        task=(
            "List the concrete problems of this answer as short bullet points: errors, "
            "hallucinations, missing cases, unclear parts. Write 'None' if there are none.\n"
            "Then end with one line exactly in this format, N a whole number from 0 to 10:\n"
            "SCORE: N/10"
        ),
    )


def revise(conversation: Sequence[Message], answer: str, review: str) -> list[Message]:
    return _follow_up(
        conversation,
        answer,
        f"A reviewer found these problems in your answer:\n{review.strip()}\n\n"
        "Rewrite your answer so it fixes them. Reply with the improved answer only.",
    )


def debate_round(conversation: Sequence[Message], own: str, others: Sequence[str]) -> list[Message]:
    return _follow_up(
        conversation,
        own,
        f"Other agents answered the same request:\n\n{_numbered('Agent', others)}\n\n"
        "Use their reasoning as additional advice: check it against yours, fix your mistakes, "
        "keep what you got right. Reply with your updated answer only.",
    )


def reconcile(conversation: Sequence[Message], answers: Sequence[str]) -> list[Message]:
    return _follow_up(
        conversation,
        None,
        f"Several agents debated the request above. Their final answers:\n\n{_numbered('Answer', answers)}\n\n"
        "Write the single best answer to the request: keep the points they agree on and settle "
        "their disagreements on the merits. Reply with the answer only, without mentioning the agents.",
    )


def synthesize(conversation: Sequence[Message], answers: Sequence[str]) -> list[Message]:
    return _follow_up(
        conversation,
        None,
        f"Several assistants answered the request above independently:\n\n{_numbered('Answer', answers)}\n\n"
        "Critically synthesize one answer of the highest quality: some of these answers may be wrong "
        "or biased, so keep what is right and complete, drop what is not. Reply with the answer only, "
        "without mentioning the other assistants.",
    )


def refine(conversation: Sequence[Message], draft: str) -> list[Message]:
    return _follow_up(
        conversation,
        draft,
        "Refine this draft: correct its errors, fill its gaps and make it clear and well organised. "
        "Reply with the improved answer only.",
    )


def validate(conversation: Sequence[Message], answer: str) -> list[Message]:
    return _judge(
        "You are a careful validator. You check answers; you do not rewrite them.",
        conversation,
        label="Answer to validate",
        answer=answer,
        task=(
            "Check that the answer is correct, complete and answers the request. End with one line:\n"
            "VERDICT: PASS\n"
            "or, if anything must change:\n"
            "VERDICT: FAIL followed by the reasons, one per line."
        ),
    )


def fix(conversation: Sequence[Message], answer: str, reasons: str) -> list[Message]:
    return _follow_up(
        conversation,
        answer,
        f"A validator rejected this answer:\n{reasons.strip()}\n\n"
        "Rewrite the answer so it addresses every reason. Reply with the corrected answer only.",
    )
