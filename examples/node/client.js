// A therappai app that gets its tokens from therappai-broker: copy it and change `callApi`.
//
// 1. Ask the broker for an access token (GetAccessToken).
// 2. Call a therappai endpoint with it (GET /me/). On HTTP 401, tell the broker the token was
//    refused (ReportRejected, by fingerprint): it refreshes once, however many apps report
//    it, and answers with the fresh token; retry once with that.
// 3. Watch the session (WatchSession) and go back to the login prompt when it ends.
//
// Settings, from the environment:
//   THERAPPAI_BROKER_SOCKET  the broker's socket (default: the broker's own default path)
//   THERAPPAI_ACCOUNT        the broker account to use (default: "default")
//   THERAPPAI_API_URL        therappai's API base URL (default: the one the broker uses)
//   THERAPPAI_CA_FILE        an extra CA certificate (PEM) to trust, e.g. the demo's fake-ca.pem
//   THERAPPAI_BROKER_PROTO   the directory holding therappai/broker/v1/broker.proto
//                            (default: ../../proto/proto from this file)
//
// Never prints a token: only its fingerprint, which the broker's logs use too.
"use strict";

const fs = require("node:fs");
const https = require("node:https");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const env = process.env;
const account = env.THERAPPAI_ACCOUNT || "default";
const loginPrompt = `login prompt: run \`therappai-brokerctl login --account ${account}\` to sign in again`;

function defaultSocket() {
  const uid = process.geteuid();
  if (uid === 0) return "/run/therappai-broker/broker.sock";
  return `${env.XDG_RUNTIME_DIR || `/run/user/${uid}`}/therappai-broker/broker.sock`;
}

// The .proto is the contract: loaded at run time, no generated code to keep in step.
const definition = protoLoader.loadSync("therappai/broker/v1/broker.proto", {
  includeDirs: [env.THERAPPAI_BROKER_PROTO || path.join(__dirname, "../../proto/proto")],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
});
const { Broker } = grpc.loadPackageDefinition(definition).therappai.broker.v1;
const broker = new Broker(
  `unix:${env.THERAPPAI_BROKER_SOCKET || defaultSocket()}`,
  grpc.credentials.createInsecure(),
);

// A unary call as a promise, with a deadline.
function unary(method, request, seconds = 10) {
  return new Promise((resolve, reject) => {
    broker[method](request, { deadline: Date.now() + seconds * 1000 }, (err, answer) =>
      err ? reject(err) : resolve(answer),
    );
  });
}

async function apiUrl() {
  if (env.THERAPPAI_API_URL) return env.THERAPPAI_API_URL.replace(/\/$/, "");
  const status = await unary("Status", {});
  const entry = status.accounts.find((a) => a.name === account);
  if (!entry) throw new Error(`the broker has no account "${account}": set THERAPPAI_ACCOUNT`);
  return entry.base_url.replace(/\/$/, "");
}

// GET /me/ with the token; resolves to { status, body }.
function callApi(baseUrl, token) {
  const ca = env.THERAPPAI_CA_FILE ? fs.readFileSync(env.THERAPPAI_CA_FILE) : undefined;
  return new Promise((resolve, reject) => {
    const request = https.get(
      `${baseUrl}/me/`,
      { headers: { Authorization: `Bearer ${token}` }, ca, timeout: 10_000 },
      (reply) => {
        let text = "";
        reply.setEncoding("utf8");
        reply.on("data", (chunk) => (text += chunk));
        reply.on("end", () => {
          const json = reply.headers["content-type"]?.startsWith("application/json");
          resolve({ status: reply.statusCode, body: json ? JSON.parse(text) : null });
        });
      },
    );
    request.on("timeout", () => request.destroy(new Error("GET /me/ timed out")));
    request.on("error", reject);
  });
}

// Resolves when the session ends (logged out, or a new login is needed).
function watchUntilLoggedOut() {
  return new Promise((resolve, reject) => {
    const events = broker.WatchSession({ account });
    events.on("data", (event) => {
      console.log("session", event.state, event.reason);
      if (["SESSION_STATE_LOGGED_OUT", "SESSION_STATE_NEEDS_LOGIN"].includes(event.state)) {
        events.cancel();
        resolve();
      }
    });
    events.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
    events.on("end", () =>
      reject(new Error("the broker ended the session stream (it stopped?): start the app again")),
    );
  });
}

async function main() {
  const baseUrl = await apiUrl();
  let answer = await unary("GetAccessToken", { account });
  console.log("token", answer.fingerprint);
  let reply = await callApi(baseUrl, answer.access_token);
  if (reply.status === 401) {
    console.log("therappai answered 401: reported to the broker, retrying once");
    answer = await unary("ReportRejected", { account, fingerprint: answer.fingerprint }, 30);
    console.log("token", answer.fingerprint);
    reply = await callApi(baseUrl, answer.access_token);
  }
  if (reply.status === 401) {
    console.log("therappai refused a fresh token too.", loginPrompt);
    return;
  }
  if (reply.status !== 200) throw new Error(`GET /me/ answered HTTP ${reply.status}`);
  console.log("signed in as", reply.body.email);
  await watchUntilLoggedOut();
  console.log(loginPrompt);
}

main()
  .catch((err) => {
    // The broker's details say what to do next (log in, ask an admin for a rule, ...).
    if (err.code === grpc.status.UNAUTHENTICATED) {
      console.log(err.details);
      console.log(loginPrompt);
      return;
    }
    console.error(`the example failed: ${err.message}`);
    process.exitCode = 1;
  })
  .finally(() => broker.close());
