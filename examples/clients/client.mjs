// Sends one record to the gateway with Node's https module; prints the status, any Retry-After,
// then the answer. No packages needed:
//
//   GATEWAY_URL=https://localhost:8443/v1/records GATEWAY_CA=gateway-ca.pem \
//   CLIENT_CERT=orgs/sz-....pem CLIENT_KEY=orgs/sz-....key node client.mjs RECORD.json
//
// or with the PKCS#12 bundle instead of the PEM pair:
//   CLIENT_P12=orgs/sz-....p12 CLIENT_P12_PASSWORD_FILE=orgs/sz-....p12.pass
//
// Without either it connects without a client certificate (the gateway refuses that in the TLS
// handshake). Exits 0 whenever an answer came back, 2 when none did.
import { readFileSync } from "node:fs";
import { request } from "node:https";

const env = process.env;
// The file's bytes as they are: a retry of the same file is the same record.
const record = readFileSync(process.argv[2]);
const options = {
  method: "POST",
  ca: readFileSync(env.GATEWAY_CA), // trusts only the CA that issued the gateway's certificate
  headers: { "content-type": "application/json", "content-length": record.length },
  timeout: 60_000,
};
if (env.CLIENT_P12) {
  options.pfx = readFileSync(env.CLIENT_P12);
  // The password file holds the password on one line.
  options.passphrase = readFileSync(env.CLIENT_P12_PASSWORD_FILE, "utf8").trim();
} else if (env.CLIENT_CERT) {
  options.cert = readFileSync(env.CLIENT_CERT);
  options.key = readFileSync(env.CLIENT_KEY);
}

const req = request(env.GATEWAY_URL, options, (answer) => {
  const chunks = [];
  answer.on("data", (chunk) => chunks.push(chunk));
  answer.on("end", () => {
    console.log(`status: ${answer.statusCode}`);
    if (answer.headers["retry-after"]) console.log(`retry-after: ${answer.headers["retry-after"]}`);
    console.log();
    console.log(Buffer.concat(chunks).toString());
  });
});
req.on("timeout", () => req.destroy(new Error("no answer within 60 s")));
req.on("error", (e) => {
  console.error(`error: ${e.message}`);
  process.exitCode = 2;
});
req.end(record);
