// The official x402 *v1* paid server for the local world.
//
// Why node: the Python SDK (2.25) server only speaks v2; the reference v1 server
// is npm `x402-express` 1.2.0 (402 JSON body, X-PAYMENT in, X-PAYMENT-RESPONSE out).
// Its middleware only talks to a facilitator over HTTP ({url}/verify, {url}/settle),
// so this process also serves a tiny facilitator on a second loopback port whose
// handlers are npm `x402` 1.2.0's own `verify`/`settle`, given our viem client for
// the local anvil (chain id 84532, which v1 calls "base-sepolia").
//
// Configuration (environment; keys never go in argv where `ps` shows them):
//   X402_RPC_URL            anvil JSON-RPC URL
//   X402_NETWORK            v1 network name (default "base-sepolia")
//   X402_TOKEN_ADDRESS      FiatToken proxy address
//   X402_TOKEN_NAME         EIP-712 domain name (e.g. "USD Coin")
//   X402_TOKEN_VERSION      EIP-712 domain version (FiatToken v2.2: "2")
//   X402_TOKEN_DECIMALS     token decimals (default 6)
//   X402_PAY_TO             payee of every route
//   X402_FACILITATOR_KEY    private key that submits settlements (pays gas)
//   X402_PORT               port for the paid API; 0 (default) = any free port
//   X402_EXIT_ON_STDIN_EOF  "1": exit when stdin closes (the launcher died)
//
// Prints exactly one JSON line on stdout once both servers listen:
//   {"ready": true, "url": ..., "facilitatorUrl": ..., "facilitator": <address>,
//    "network": ..., "payTo": ..., "routes": [{method, path, amount, asset, description}]}

import { createHash } from "node:crypto";
import express from "express";
import { createWalletClient, defineChain, getAddress, http, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { settle, verify } from "x402/facilitator";
import { paymentMiddleware } from "x402-express";

// x402 v1 derives the EIP-712 chain id from the network name, so the chain we
// settle on must really have that id.
const V1_CHAIN_IDS = { "base-sepolia": 84532, base: 8453 };

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
}

function listen(app, port) {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, "127.0.0.1", (error) => (error ? reject(error) : resolve(server)));
    server.on("error", reject);
  });
}

const network = process.env.X402_NETWORK || "base-sepolia";
const rpcUrl = requireEnv("X402_RPC_URL");
const token = {
  address: getAddress(requireEnv("X402_TOKEN_ADDRESS")),
  decimals: Number(process.env.X402_TOKEN_DECIMALS || "6"),
  eip712: { name: requireEnv("X402_TOKEN_NAME"), version: requireEnv("X402_TOKEN_VERSION") },
};
const payTo = getAddress(requireEnv("X402_PAY_TO"));
const port = Number(process.env.X402_PORT || "0");

const chainId = V1_CHAIN_IDS[network];
if (!chainId) throw new Error(`unsupported v1 network ${network}`);
const chain = defineChain({
  id: chainId,
  name: `local ${network}`,
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpcUrl] } },
});
// anvil automines: poll receipts quickly instead of viem's 4 s default.
const facilitatorClient = createWalletClient({
  account: privateKeyToAccount(requireEnv("X402_FACILITATOR_KEY")),
  chain,
  transport: http(rpcUrl),
  pollingInterval: 20,
}).extend(publicActions);

const rpcChainId = await facilitatorClient.getChainId();
if (rpcChainId !== chainId) {
  throw new Error(`${rpcUrl} has chain id ${rpcChainId}, but ${network} means ${chainId}`);
}

// One settlement at a time: viem picks the nonce per transaction from the node,
// so two concurrent settles could reuse one.
let settleQueue = Promise.resolve();
function serialised(task) {
  const run = settleQueue.then(task, task);
  settleQueue = run.catch(() => undefined);
  return run;
}

const facilitatorApp = express();
facilitatorApp.use(express.json({ limit: "1mb" }));
facilitatorApp.post("/verify", async (req, res) => {
  try {
    res.json(await verify(facilitatorClient, req.body.paymentPayload, req.body.paymentRequirements));
  } catch (error) {
    console.error("facilitator verify failed:", error);
    res.status(500).json({ error: String(error) });
  }
});
facilitatorApp.post("/settle", async (req, res) => {
  try {
    const { paymentPayload, paymentRequirements } = req.body;
    res.json(await serialised(() => settle(facilitatorClient, paymentPayload, paymentRequirements)));
  } catch (error) {
    console.error("facilitator settle failed:", error);
    res.status(500).json({ error: String(error) });
  }
});
facilitatorApp.get("/supported", (_req, res) => {
  res.json({ kinds: [{ x402Version: 1, scheme: "exact", network }] });
});
const facilitatorServer = await listen(facilitatorApp, 0);
const facilitatorUrl = `http://127.0.0.1:${facilitatorServer.address().port}`;

const routeTable = [
  { method: "GET", path: "/v1/weather", amount: "1000", description: "Current weather (JSON, x402 v1)" },
  { method: "POST", path: "/v1/echo", amount: "4000", description: "Echo of the posted body (x402 v1)" },
];
const routes = Object.fromEntries(
  routeTable.map((r) => [
    `${r.method} ${r.path}`,
    {
      price: { amount: r.amount, asset: token },
      network,
      config: { description: r.description, mimeType: "application/json" },
    },
  ]),
);

const app = express();
app.use(paymentMiddleware(payTo, routes, { url: facilitatorUrl }));
app.get("/v1/weather", (_req, res) => {
  res.json({ city: "Porto", temperature_c: 18.0, conditions: "cloudy", x402Version: 1 });
});
app.post("/v1/echo", express.raw({ type: () => true, limit: "1mb" }), (req, res) => {
  const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  res.json({
    echo: body.toString("utf8"),
    bytes: body.length,
    sha256: createHash("sha256").update(body).digest("hex"),
  });
});
app.get("/free", (_req, res) => res.json({ free: true }));
const server = await listen(app, port);

if (process.env.X402_EXIT_ON_STDIN_EOF === "1") {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}

console.log(
  JSON.stringify({
    ready: true,
    url: `http://127.0.0.1:${server.address().port}`,
    facilitatorUrl,
    facilitator: facilitatorClient.account.address,
    network,
    payTo,
    routes: routeTable.map(({ method, path, amount, description }) => ({
      method,
      path,
      amount,
      asset: token.address,
      description,
    })),
  }),
);
