// A stock @grpc/grpc-js client of the broker, as a Node.js app would write it: the published
// .proto loaded at run time by @grpc/proto-loader, `new Broker("unix:PATH", insecure)`, no
// channel options.
//
// Usage: node node_client.js PROTO_ROOT SOCKET ACCOUNT DENIED_ACCOUNT UNKNOWN_ACCOUNT
// Prints one line per step (`token <fp>`, `denied <CODE> | <details>`, `unknown <CODE> |
// <details>`, `watch <state> snapshot`); never a token. Exits non-zero on any unexpected answer.
"use strict";

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protoRoot, socket, account, denied, unknown] = process.argv.slice(2);

const definition = protoLoader.loadSync("therappai/broker/v1/broker.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
});
const { Broker } = grpc.loadPackageDefinition(definition).therappai.broker.v1;
const broker = new Broker(`unix:${socket}`, grpc.credentials.createInsecure());
const deadline = () => ({ deadline: Date.now() + 10_000 });

function getAccessToken(name) {
  return new Promise((resolve, reject) => {
    broker.GetAccessToken({ account: name }, deadline(), (err, answer) =>
      err ? reject(err) : resolve(answer),
    );
  });
}

async function codeOf(name) {
  try {
    await getAccessToken(name);
  } catch (err) {
    const code = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
    return `${code} | ${err.details}`;
  }
  throw new Error(`expected an error for account ${name}, got a token`);
}

function firstEvent(name) {
  return new Promise((resolve, reject) => {
    const events = broker.WatchSession({ account: name }, deadline());
    events.once("data", (event) => {
      events.cancel();
      resolve(event);
    });
    events.once("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

async function main() {
  const answer = await getAccessToken(account);
  if (!answer.access_token || !(answer.expires_at_unix > 0)) {
    throw new Error("an empty token");
  }
  console.log("token", answer.fingerprint);
  console.log("denied", await codeOf(denied));
  console.log("unknown", await codeOf(unknown));
  const event = await firstEvent(account);
  console.log("watch", event.state, event.snapshot ? "snapshot" : "");
  broker.close();
}

main().catch((err) => {
  // A gRPC error's message carries its status and details, never a token.
  console.error(`node client failed: ${err.message}`);
  process.exit(1);
});
