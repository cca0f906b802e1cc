"""A LangChain agent with the x402 wallet tools.

    X402_AGENT_HOME=<home> .venv/bin/python examples/langchain_agent.py <url>

Any tool-calling chat model works (`bind_tools`); this example scripts the model's turns so it
runs offline: check the budget, fetch the URL (paying if asked), then answer from the results.
A refusal (say `session_allowance_exceeded`) comes back as a tool message the model can read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from x402_agent.langchain_tools import X402Toolkit


class ScriptedModel(BaseChatModel):
    """Stands in for a real model: emits pre-written tool calls, then a final answer."""

    script: list[AIMessage]

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        reply = (
            self.script[turn]
            if turn < len(self.script)
            else AIMessage(
                content="Done: "
                + " | ".join(str(m.content)[:120] for m in messages if isinstance(m, ToolMessage))
            )
        )
        return ChatResult(generations=[ChatGeneration(message=reply)])


def main(url: str) -> None:
    toolkit = X402Toolkit.open()  # one session: its allowance applies to this agent
    tools = {tool.name: tool for tool in toolkit.get_tools()}
    model = ScriptedModel(
        script=[
            AIMessage(content="", tool_calls=[{"name": "x402_budget", "args": {}, "id": "1"}]),
            AIMessage(content="", tool_calls=[{"name": "x402_fetch", "args": {"url": url}, "id": "2"}]),
        ]
    ).bind_tools(list(tools.values()))
    messages: list[BaseMessage] = [HumanMessage(content=f"Get {url}, paying if needed.")]
    while True:  # the agent loop: call tools until the model answers
        reply = model.invoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(tools[call["name"]].invoke(call))
    print(messages[-1].content)


if __name__ == "__main__":
    main(sys.argv[1])
