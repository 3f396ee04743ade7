#!/usr/bin/env python3
"""Seeds for the fuzz corpora: the policy test records and the example records (valid records of
every kind, both ways), and hand-written hostile inputs (keys written twice, plainly or with
escapes; case variants and other spellings of a record id; deep and unclosed nesting; numbers
past every limit; escapes, control bytes and bad UTF-8; stale and far-future `created_at`).

Usage: python3 fuzz/seeds.py <repository> <out>   writes <out>/examine/ and <out>/json_limits/.
The committed corpora are these seeds plus what the fuzz runs found, minimised (fuzz/README.md).
"""
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
out = sys.argv[2]
for d in ['examine', 'json_limits']:
    os.makedirs(os.path.join(out, d), exist_ok=True)
    for name, data in seeds.items():
        open(os.path.join(out, d, name), 'wb').write(data)
print(len(seeds), 'seeds')
