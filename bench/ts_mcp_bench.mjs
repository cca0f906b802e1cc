// The TypeScript MCP SDK side of bench/bench_mcp.py: 1.x (@modelcontextprotocol/sdk) or 2.x
// (@modelcontextprotocol/client), both pinned in package.json. Times are taken inside node, so
// node's own start-up is not counted against either server.
//
// stdin: {"sdk": "v1"|"v2", "runs": N, "servers": [{"name", "command", "args", "env"}],
//         "call": {"server": <index>, "tool", "arguments", "count"} (optional)}
// stdout: one JSON line {"cold_start_ms": {<name>: [...]}, "call_ms": [...]}
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const spec = JSON.parse(readFileSync(0, "utf8"));

async function connect(server) {
  const options = { command: server.command, args: server.args, env: server.env, stderr: "ignore" };
  if (spec.sdk === "v1") {
    const { Client } = await import("@modelcontextprotocol/sdk/client/index.js");
    const { StdioClientTransport } = await import("@modelcontextprotocol/sdk/client/stdio.js");
    const client = new Client({ name: "bench-ts-v1", version: "1.0.0" }, { capabilities: {} });
    await client.connect(new StdioClientTransport(options));
    return client;
  }
  const { Client } = await import("@modelcontextprotocol/client");
  const { StdioClientTransport } = await import("@modelcontextprotocol/client/stdio");
  const client = new Client({ name: "bench-ts-v2", version: "2.0.0" }, { capabilities: {} });
  await client.connect(new StdioClientTransport(options));
  return client;
}

async function coldStart(server) {
  const started = performance.now();
  const client = await connect(server);  // spawns the server, then the handshake if any
  const listed = await client.listTools();
  const elapsed = performance.now() - started;
  if (!listed.tools.length) throw new Error(`${server.name}: no tools`);
  await client.close();
  return elapsed;
}

// Load the SDK modules once before timing, so the first run does not pay for them.
await (spec.sdk === "v1" ? import("@modelcontextprotocol/sdk/client/stdio.js")
                         : import("@modelcontextprotocol/client/stdio"));
const out = { cold_start_ms: {}, call_ms: [] };
for (const server of spec.servers) {
  out.cold_start_ms[server.name] = [];
  await coldStart(server);  // untimed: files in the OS cache, our start recorded
}
for (let run = 0; run < spec.runs; run++) {  // alternate, so drift hits every server alike
  for (const server of spec.servers) out.cold_start_ms[server.name].push(await coldStart(server));
}
if (spec.call) {
  const client = await connect(spec.servers[spec.call.server]);
  const params = { name: spec.call.tool, arguments: spec.call.arguments ?? {} };
  await client.callTool(params);  // the first call opens the agent: not per-call overhead
  for (let n = 0; n < spec.call.count; n++) {
    const started = performance.now();
    const result = await client.callTool(params);
    out.call_ms.push(performance.now() - started);
    if (result.isError) throw new Error(JSON.stringify(result.content));
  }
  await client.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
