"""The official MCP Python SDK against a running Toolsmith gateway.

Usage: sdk_client.py URL TOOL_NAME
Creates TOOL_NAME, waits for notifications/tools/list_changed, calls the tool by its own
name and through run_tool, then deletes it. Prints one JSON line of what it saw; exits
non-zero on any mismatch.
"""

import asyncio
import json
import sys

import anyio
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, name: str) -> None:
    changed = anyio.Event()

    async def on_message(message) -> None:
        if isinstance(message, Exception):
            return
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            changed.set()

    async with streamable_http_client(url) as (read, write, *_):
        async with ClientSession(read, write, message_handler=on_message) as session:
            init = await session.initialize()
            created = await session.call_tool(
                "create_tool",
                {
                    "name": name,
                    "description": "Doubles a number.",
                    "code": "export default async function (context: { n: number }) {\n  return { doubled: context.n * 2 };\n}",
                    "input_schema": {
                        "type": "object",
                        "properties": {"n": {"type": "number"}},
                        "required": ["n"],
                    },
                },
            )
            assert not created.is_error, created
            with anyio.fail_after(10):
                await changed.wait()
            listed = await session.list_tools()
            names = [tool.name for tool in listed.tools]
            assert name in names, names
            direct = await session.call_tool(name, {"n": 21})
            assert not direct.is_error, direct
            via_run = await session.call_tool("run_tool", {"name": name, "params": {"n": 4}})
            assert not via_run.is_error, via_run
            bad = await session.call_tool(name, {"n": "x"})
            assert bad.is_error, bad
            deleted = await session.call_tool("delete_tool", {"name": name})
            assert not deleted.is_error, deleted
            gone = await session.call_tool(name, {"n": 1})
            print(
                json.dumps(
                    {
                        "protocol": str(init.protocol_version),
                        "server": init.server_info.name,
                        "listed": name in names,
                        "direct": direct.structured_content,
                        "via_run_tool": via_run.structured_content,
                        "bad_kind": (bad.structured_content or {}).get("kind"),
                        "gone_kind": (gone.structured_content or {}).get("kind"),
                    }
                )
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
