"""Request types for structured answers: tools, tool_choice and response_format, and their checks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from api.arguments import encodable, portable_json, refused

MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 1_048_576

# OpenAI's rule for function and schema names.
ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS), AfterValidator(encodable)]
JsonObject = Annotated[dict[str, Any], AfterValidator(portable_json)]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ToolName
    description: Description | None = None
    # The arguments' JSON schema; none means the function takes no arguments.
    parameters: JsonObject | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ToolName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: ToolName
    description: Description | None = None
    json_schema: JsonObject = Field(alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise refused(
                "A response_format of type json_schema needs json_schema: its name and schema.", param="json_schema"
            )
        if self.type != "json_schema" and self.json_schema is not None:
            raise refused("json_schema goes only with a response_format of type json_schema.", param="json_schema")
        return self


def check_tools(tools: list[ToolIn], choice: ToolChoice | None) -> None:
    """Tools named once each, and a tool_choice that fits them."""
    names = [tool.function.name for tool in tools]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise refused(f"Two tools are named '{name}': function names must be unique.", param=f"tools.{index}")
    if choice is not None and not tools:
        raise refused("tool_choice is only allowed when tools are specified.", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise refused(
            f"tool_choice names the function '{choice.function.name}', which is not in tools.", param="tool_choice"
        )


def chosen_tool(choice: ToolChoice | None) -> str:
    """tool_choice as a job carries it: "none", "auto", "required" or the function's name."""
    if choice is None:
        return "auto"
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    return choice
