from __future__ import annotations

import json
from pathlib import Path

import pytest

from presets.embedded import resolve_embedded
from presets.gguf import read_metadata
from worker.chat_prompt import ChatPrompter
from worker.engine import PromptRejected, UnsupportedParameter
from worker.protocol import Message, Tool, ToolCall

# The shape of the many published templates that insist on user/assistant turns.
ALTERNATING = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<{{ message['role'] }}>{{ message['content'] }}"
    "{% endfor %}"
)


def prompter(template: str) -> ChatPrompter:
    return ChatPrompter(
        metadata={"tokenizer.chat_template": template},
        bos_text="",
        eos_text="",
        tokenize=lambda text, add_bos: list(text),
        source="test.gguf",
    )


def test_a_conversation_the_template_accepts_renders() -> None:
    tokens = (
        prompter(ALTERNATING).render([Message("user", "hi"), Message("assistant", "yo"), Message("user", "?")]).tokens
    )
    assert bytes(tokens).startswith(b"<user>hi<assistant>yo<user>?")


def test_the_templates_own_refusal_becomes_prompt_rejected_with_its_reason() -> None:
    with pytest.raises(PromptRejected) as rejected:
        prompter(ALTERNATING).render([Message("user", "hi"), Message("user", "again")])
    assert "Conversation roles must alternate" in str(rejected.value)
    assert "chat template rejected" in str(rejected.value)


def test_a_template_that_fails_on_the_conversation_is_rejected_too() -> None:
    indexes_past_the_end = "{{ messages[3]['content'].upper() }}"
    with pytest.raises(PromptRejected):
        prompter(indexes_past_the_end).render([Message("user", "hi")])


# --- tools ---------------------------------------------------------------------------------

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CALLED = [
    Message("user", "Weather in Paris?"),
    Message("assistant", "", tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')]),
    Message("tool", "18C and sunny", tool_call_id="call_1"),
]

# A template written for OpenAI-shaped tools and messages, as Qwen's and Llama 3's are.
NATIVE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}[{{ c.id }} {{ c.function.name }} "
    "{{ c.function.arguments.city }}]{% endfor %}{% endif %}"
    "{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}{{ m.content }}{% endfor %}<assistant>"
)


def text_of(prompter: ChatPrompter, messages: list[Message], tools: list[Tool]) -> str:
    return bytes(prompter.render(messages, tools=tools).tokens).decode()


def smollm2() -> ChatPrompter:
    path = resolve_embedded("smollm2-135m", models_dir=Path("unused"))
    metadata = {k: v for k, v in read_metadata(path).items() if isinstance(v, str)}
    return ChatPrompter(
        metadata=metadata, bos_text="", eos_text="<|im_end|>", tokenize=lambda t, _: list(t), source=path.name
    )


def gemma3() -> ChatPrompter:
    # The gemma3-270m file carries no template: its architecture's published one renders it.
    return ChatPrompter(
        metadata={"general.architecture": "gemma3"},
        bos_text="<bos>",
        eos_text="<eos>",
        tokenize=lambda t, _: list(t),
        source="gemma-3-270m-q4_k_m.gguf",
    )


def test_a_template_with_tools_gets_them_and_the_calls_as_openai_shapes_them() -> None:
    text = text_of(prompter(NATIVE), CALLED, [WEATHER])
    tool = json.loads(text[len("<tools>") : text.index(";</tools>")])
    assert tool == {
        "type": "function",
        "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
    }
    # The arguments reach the template as an object, as templates index them.
    assert "<assistant>[call_1 get_weather Paris]<tool>(call_1)18C and sunny<assistant>" in text


def test_smollm2_gets_the_tools_in_its_system_turn_and_earlier_calls_as_hermes_text() -> None:
    messages = [Message("system", "Be brief."), *CALLED]
    text = text_of(smollm2(), messages, [WEATHER])
    system = text[: text.index("<|im_end|>")]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n")
    assert '"name": "get_weather"' in system
    assert "<tool_call>" in system
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n18C and sunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in text
    assert text.count("<|im_start|>system") == 1


def test_gemma3_keeps_turns_alternating_when_tool_results_follow_each_other() -> None:
    two_calls = [
        Message("user", "Weather in Paris and Rome?"),
        Message(
            "assistant",
            "Checking.",
            tool_calls=[
                ToolCall(id="a", name="get_weather", arguments='{"city": "Paris"}'),
                ToolCall(id="b", name="get_weather", arguments='{"city": "Rome"}'),
            ],
        ),
        Message("tool", "18C", tool_call_id="a"),
        Message("tool", "25C", tool_call_id="b"),
        Message("user", "Which is warmer?"),
    ]
    text = text_of(gemma3(), two_calls, [WEATHER])
    assert text.startswith("<bos><start_of_turn>user\n# Tools")
    assert "Weather in Paris and Rome?<end_of_turn>\n<start_of_turn>model\nChecking.\n<tool_call>" in text
    assert (
        "<start_of_turn>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response>\n"
        "Which is warmer?<end_of_turn>\n<start_of_turn>model\n"
    ) in text


def test_without_tools_a_plain_conversation_renders_as_before() -> None:
    assert text_of(smollm2(), [Message("user", "hi")], []) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_template_that_opens_thinking_at_the_end_of_the_prompt_is_noticed() -> None:
    thinking = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant><think>\n"
    assert prompter(thinking).render([Message("user", "hi")]).in_reasoning
    assert not prompter(ALTERNATING).render([Message("user", "hi")]).in_reasoning


def test_tools_the_template_fails_on_are_a_400_naming_tools() -> None:
    picky = (
        "{% if tools %}{% for t in tools %}{{ t.function.parameters.properties.missing.type }}{% endfor %}{% endif %}"
        "{{ messages[0].content }}"
    )
    with pytest.raises(UnsupportedParameter) as refused:
        prompter(picky).render([Message("user", "hi")], tools=[WEATHER])
    assert refused.value.param == "tools"
