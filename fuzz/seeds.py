#!/usr/bin/env python3
"""Seeds for the fuzz corpora: the policy test records and the example records (valid records of
every kind, both ways), and hand-written hostile inputs (keys written twice, plainly or with
escapes; case variants and other spellings of a record id; deep and unclosed nesting; numbers
past every limit; escapes, control bytes and bad UTF-8; stale and far-future `created_at`).

Also, for the loaders: `policy_loader` seeds (a first byte picking one file of the shipped
policy set, in name order, then a text for it: each shipped file as it is, the examples of
docs/policies.md, and hostile TOML) and `config_loader` seeds (the Debian package's
configuration, the one `certs init` writes (from <repository>/target/fuzz-seeds/gateway.toml if
present), the examples of the README and docs, and hostile TOML). The `audit_log` seeds come from
the real writer, so from a Rust test: `HETAO_FUZZ_SEEDS=fuzz/corpus cargo test -p
hetao-gateway-core --test fuzz_corpus -- --ignored write_audit_log_seeds`.

Usage: python3 fuzz/seeds.py <repository> <out> [target...]   writes <out>/<target>/ for each
target named (default: all: examine, json_limits, policy_loader, config_loader).
The committed corpora are these seeds plus what the fuzz runs found, minimised (fuzz/README.md).
"""
import re
import json, os, glob, sys, hashlib
root = sys.argv[1]
seeds = {}
def add(name, data):
    if isinstance(data, str): data = data.encode()
    seeds[name] = data
for p in sorted(glob.glob(root + '/policies/tests/records/*.json') + glob.glob(root + '/examples/records/*.json')):
    add(os.path.basename(os.path.dirname(os.path.dirname(p))) + '-' + os.path.basename(p), open(p, 'rb').read())
base = json.load(open(root + '/policies/tests/records/' + sorted(os.listdir(root + '/policies/tests/records'))[0]))
rec = json.dumps(base, separators=(',', ':'))
rid = base['record_id']
# duplicate keys
add('dup-top-kind', rec.replace('{', '{"kind":"talent",', 1))
add('dup-record-id', rec.replace('{', '{"record_id":"00000000-0000-4000-8000-000000000000",', 1))
add('dup-body-grade', rec.replace('"body":{', '"body":{"data_grade":"core",', 1) if '"body":{' in rec else rec)
add('dup-escaped-key', rec.replace('{', '{"\\u006bind":"talent",', 1))
add('dup-plain', '{"a":1,"a":2}')
add('dup-escaped-plain', '{"a":1,"\\u0061":2}')
add('dup-nested', '{"x":{"y":[{"z":1,"z":1}]}}')
# case-variant ids
add('id-upper', rec.replace(rid, rid.upper()))
add('id-mixed', rec.replace(rid, ''.join(c.upper() if i % 2 else c for i, c in enumerate(rid))))
add('id-braces', rec.replace(rid, '{' + rid + '}'))
add('id-urn', rec.replace(rid, 'urn:uuid:' + rid))
add('id-nohyphen', rec.replace(rid, rid.replace('-', '')))
add('id-escaped', rec.replace(rid, ''.join('\\u%04x' % ord(c) for c in rid)))
# deep nesting
add('deep-arrays-64', '[' * 64 + ']' * 64)
add('deep-arrays-65', '[' * 65 + ']' * 65)
add('deep-objects-200', '{"a":' * 200 + '1' + '}' * 200)
add('deep-unclosed', '[' * 5000)
add('deep-in-body', rec.replace('"body":{', '"body":{"n":' + '[' * 40 + ']' * 40 + ',', 1))
# huge numbers
for i, n in enumerate(['1e400', '-1e400', '18446744073709551616', '-9223372036854775809',
                       '0.' + '0' * 400 + '1', '1' * 500, '1.7976931348623157e308', '4.9e-324',
                       '-0', '1E+2', '0e0', '2.2250738585072011e-308']):
    add('num-%02d' % i, '{"n":%s}' % n)
add('num-in-record', rec.replace('{', '{"x":1e999999,', 1))
# escapes and encodings
add('esc-nul', '{"s":"\\u0000"}')
add('esc-lone-surrogate', '{"s":"\\ud800"}')
add('esc-pair', '{"s":"\\ud83d\\ude00"}')
add('esc-bad', '{"s":"\\x41"}')
add('esc-all', '{"s":"\\"\\\\\\/\\b\\f\\n\\r\\t"}')
add('raw-control', b'{"s":"\x01"}')
add('bad-utf8', b'{"s":"\xff\xfe"}')
add('overlong-utf8', b'{"s":"\xc0\xaf"}')
add('bom', b'\xef\xbb\xbf' + rec.encode())
add('trailing', rec + ' x')
add('two-docs', rec + rec)
add('nan', '{"n":NaN}')
add('empty', '')
add('ws', ' \t\r\n')
add('created-far-future', rec.replace(base['created_at'], '9999-12-31T23:59:59Z'))
add('created-bad', rec.replace(base['created_at'], '2026-02-30T25:61:00+08:00'))
add('from-to-same', rec.replace('"to":"%s"' % base['to'], '"to":"%s"' % base['from']))
add('unknown-park', rec.replace('"to":"%s"' % base['to'], '"to":"../../etc"'))

def toml_blocks(path):
    """The ```toml blocks of a Markdown file."""
    return re.findall(r'```toml\n(.*?)```', open(path, encoding='utf-8').read(), re.S)

# policy_loader: <index of the file replaced> <its new text>
policy_names = sorted(n for n in os.listdir(root + '/policies') if n.endswith('.toml'))
policy = {}
def pol(name, index, text):
    if isinstance(text, str): text = text.encode()
    policy[name] = bytes([index]) + text
manifest = policy_names.index('policy-set.toml')
rule_file = next(i for i, n in enumerate(policy_names) if n != 'policy-set.toml')
for i, n in enumerate(policy_names):
    text = open(root + '/policies/' + n, 'rb').read()
    pol('shipped-' + n, i, text)
    pol('shipped-' + n + '-halved', i, text[:len(text) // 2])
for i, block in enumerate(toml_blocks(root + '/docs/policies.md')):
    pol('docs-policies-%02d' % i, manifest if 'version' in block and '[[rule' not in block else rule_file, block)
other = next(n for n in policy_names if n not in ('policy-set.toml', policy_names[rule_file]))
pol('rule-ids-twice', rule_file, open(root + '/policies/' + other, 'rb').read())
pol('empty-manifest', manifest, '')
pol('empty-rules', rule_file, '')
pol('not-utf8', rule_file, b'\xff\xfe[[rule]]')
pol('dup-key', rule_file, '[[rule]]\nid = "X1"\nid = "X2"\n')
pol('deep-arrays', rule_file, 'x = ' + '[' * 3000 + ']' * 3000 + '\n')
pol('deep-inline', rule_file, 'x = ' + '{a=' * 500 + '1' + '}' * 500 + '\n')
pol('huge-int', manifest, 'version = 99999999999999999999999\n')
pol('bad-date', rule_file, 'd = 2026-02-30T25:61:00Z\n')

# config_loader: a configuration file
config = {}
def cfg(name, text):
    config[name] = text.encode() if isinstance(text, str) else text
cfg('deploy-debian', open(root + '/deploy/debian/gateway.toml', 'rb').read())
certs_init = root + '/target/fuzz-seeds/gateway.toml'
if os.path.exists(certs_init):
    cfg('certs-init', open(certs_init, 'rb').read())
for doc in ['README.md'] + sorted(glob.glob(root + '/docs/*.md')):
    path = doc if doc.startswith(root) else root + '/' + doc
    for i, block in enumerate(toml_blocks(path)):
        if re.search(r'^\[(server|admin|limits|audit|parks|cluster|rate_limit|upstream|logging)', block, re.M):
            cfg('%s-%02d' % (os.path.basename(path)[:-3], i), block)
full = config['deploy-debian'].decode()
cfg('limits-zero', full + '\n[limits]\nmax_body_bytes = 0\n' if '[limits]' not in full else full.replace('[limits]', '[limits]\nmax_body_bytes = 0', 1))
cfg('rate-nan', full.replace('[server]', '[rate_limit]\nper_org_per_second = nan\nburst = inf\n\n[server]', 1))
cfg('values-99', full.replace('[server]', '[limits]\nmax_json_values = 99\n\n[server]', 1) if '[limits]' not in full else full)
cfg('listen-bad', full.replace('[server]', '[server]\nlisten = "localhost"', 1))
cfg('dup-table', full + '\n[server]\nlisten = "0.0.0.0:1"\n')
cfg('empty', '')
cfg('not-utf8', b'\xc0\xaf[server]')
cfg('deep-inline', 'x = ' + '{a=' * 500 + '1' + '}' * 500 + '\n')
cfg('huge-numbers', full.replace('[server]', '[limits]\nmax_body_bytes = 18446744073709551616\nidle_timeout_secs = 1e400\n\n[server]', 1))

out = sys.argv[2]
targets = sys.argv[3:] or ['examine', 'json_limits', 'policy_loader', 'config_loader']
for d in targets:
    chosen = {'policy_loader': policy, 'config_loader': config}.get(d, seeds)
    os.makedirs(os.path.join(out, d), exist_ok=True)
    for name, data in chosen.items():
        open(os.path.join(out, d, 'seed-' + name if d in ('policy_loader', 'config_loader') else name), 'wb').write(data)
    print(d, len(chosen), 'seeds')
