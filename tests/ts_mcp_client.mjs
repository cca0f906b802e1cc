// A host on the TypeScript MCP SDK (npm, pinned in package.json): 1.x (@modelcontextprotocol/sdk)
// or 2.x (@modelcontextprotocol/client). The Python tests drive it as a subprocess.
//
// stdin: {"sdk": "v1"|"v2", "transport": "stdio"|"http", "command", "args", "env", "url", "token",
//         "elicit": "accept"|"decline"|null, "pin": "2026-07-28" (v2 only, optional),
//         "calls": [{"tool", "arguments", "progress": bool}]}
// stdout: one JSON line {"tools": [...], "results": [...], "elicitations": [...],
//         "progress": [...], "server": {...}}; a call the SDK throws on is {"thrown": {code, message}}.
import { readFileSync } from "node:fs";

const spec = JSON.parse(readFileSync(0, "utf8"));
const elicitations = [];
const progress = [];

function answer(message) {
  elicitations.push(message);
  if (spec.elicit === "accept") return { action: "accept", content: { approve: true } };
  return { action: "decline" };
}

async function v1Client() {
  const { Client } = await import("@modelcontextprotocol/sdk/client/index.js");
  const { ElicitRequestSchema } = await import("@modelcontextprotocol/sdk/types.js");
  const capabilities = spec.elicit ? { elicitation: { form: {} } } : {};
  const client = new Client({ name: "ts-sdk-v1-host", version: "1.0.0" }, { capabilities });
  if (spec.elicit) {
    client.setRequestHandler(ElicitRequestSchema, async (request) => answer(request.params.message));
  }
  let transport;
  if (spec.transport === "stdio") {
    const { StdioClientTransport } = await import("@modelcontextprotocol/sdk/client/stdio.js");
    transport = new StdioClientTransport({ command: spec.command, args: spec.args, env: spec.env,
                                           stderr: "inherit" });
  } else {
    const { StreamableHTTPClientTransport } = await import(
      "@modelcontextprotocol/sdk/client/streamableHttp.js");
    transport = new StreamableHTTPClientTransport(new URL(spec.url), {
      requestInit: { headers: { Authorization: `Bearer ${spec.token}` } } });
  }
  return { client, transport };
}

async function v2Client() {
  const sdk = await import("@modelcontextprotocol/client");
  const options = { capabilities: spec.elicit ? { elicitation: { form: {} } } : {} };
  if (spec.pin) options.versionNegotiation = { mode: { pin: spec.pin } };
  const client = new sdk.Client({ name: "ts-sdk-v2-host", version: "2.0.0" }, options);
  if (spec.elicit) {
    client.setRequestHandler("elicitation/create", async (request) => answer(request.params.message));
  }
  let transport;
  if (spec.transport === "stdio") {
    const { StdioClientTransport } = await import("@modelcontextprotocol/client/stdio");
    transport = new StdioClientTransport({ command: spec.command, args: spec.args, env: spec.env,
                                           stderr: "inherit" });
  } else {
    transport = new sdk.StreamableHTTPClientTransport(new URL(spec.url), {
      requestInit: { headers: { Authorization: `Bearer ${spec.token}` } } });
  }
  return { client, transport };
}

const { client, transport } = spec.sdk === "v1" ? await v1Client() : await v2Client();
await client.connect(transport);
const out = { tools: [], results: [], elicitations, progress,
              server: client.getServerVersion ? client.getServerVersion() : null };
const listed = await client.listTools();
out.tools = listed.tools.map((t) => ({ name: t.name, title: t.title ?? null,
                                       annotations: t.annotations ?? null,
                                       hasOutputSchema: Boolean(t.outputSchema) }));
for (const call of spec.calls ?? []) {
  const options = call.progress ? { onprogress: (p) => progress.push(p), resetTimeoutOnProgress: true }
                                : {};
  try {
    const params = { name: call.tool, arguments: call.arguments ?? {} };
    const result = spec.sdk === "v1" ? await client.callTool(params, undefined, options)
                                     : await client.callTool(params, options);
    out.results.push({ isError: result.isError ?? false, structuredContent: result.structuredContent ?? null,
                       content: result.content });
  } catch (error) {
    out.results.push({ thrown: { code: error.code ?? null, message: String(error.message ?? error) } });
  }
}
await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
