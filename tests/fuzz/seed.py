"""Writes the seed corpus of tests/test_fuzz_corpus.py: one small file per meaningful input.

``.venv/bin/python tests/fuzz/seed.py`` (re)writes ``frames/``, ``handshake/``, ``deflate/``
and ``json/`` next to it: valid cases, every boundary of the fuzz profile (the test's
``LIMITS``: 1 KiB messages, 16 B per fragment, 2 KiB / 20 header lines) and the hostile
inputs of reliability-battery.md (row ids in the file names). It never deletes a file, so
regression inputs saved by hand stay. It checks nothing: the test does.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_fuzz_corpus import DEFLATE, KEY, LIMITS, fixed_mask  # noqa: E402

from wsflask.protocol import Connection, Side, encode_frame  # noqa: E402

M = b"\x37\xfa\x21\x3d"
LIMIT = LIMITS.max_message_size


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame."""
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=M)


def raw_header(first: int, length_bytes: bytes) -> bytes:
    """A masked frame header with a hand-made length field, then the mask, no payload."""
    return bytes([first]) + length_bytes + M


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, code.to_bytes(2, "big") + reason)


def frames_seeds() -> dict[str, bytes]:
    seeds = {
        "valid_text_hello": frame(0x1, b"hello"),
        "valid_text_empty": frame(0x1),
        "valid_binary_empty": frame(0x2),
        "valid_binary_125_7bit_max": frame(0x2, bytes(125)),
        "valid_binary_126_16bit_min": frame(0x2, bytes(126)),
        "fr05_binary_exact_limit": frame(0x2, bytes(LIMIT)),
        "fr05_binary_limit_plus_1": frame(0x2, bytes(LIMIT + 1)),
        "fr01_unmasked_text": encode_frame(0x1, b"hello"),
        "fr02_rsv1_without_deflate": frame(0x1, b"x", rsv=0x40),
        "fr02_rsv2": frame(0x1, b"x", rsv=0x20),
        "fr02_rsv3": frame(0x1, b"x", rsv=0x10),
        "fr03_len64_all_ff": raw_header(0x82, b"\xff" + b"\xff" * 8),
        "fr03_len64_msb_only": raw_header(0x82, b"\xff" + b"\x80" + bytes(7)),
        "fr04_declared_2pow40": raw_header(0x82, b"\xff" + (1 << 40).to_bytes(8, "big")),
        "fr04_declared_limit_minus_1_no_body": raw_header(
            0x82, b"\xfe" + (LIMIT - 1).to_bytes(2, "big")
        ),
        "fr06_nonminimal_16bit_len5": raw_header(0x82, b"\xfe\x00\x05") + bytes(5),
        "fr06_nonminimal_64bit_len200": raw_header(0x82, b"\xff" + (200).to_bytes(8, "big"))
        + bytes(200),
        "fr07_three_frames_one_read": frame(0x1, b"one")
        + frame(0x2, b"two")
        + frame(0x1, b"three"),
        "fg01_continuation_first": frame(0x0, b"x"),
        "fg01_text_then_binary": frame(0x1, b"a", fin=False) + frame(0x2, b"b"),
        "fg01_text_then_text": frame(0x1, b"a", fin=False) + frame(0x1, b"b"),
        "fg02_empty_continuation_flood": frame(0x1, b"a", fin=False) + frame(0x0, fin=False) * 100,
        "fg02_one_byte_continuation_flood": frame(0x1, b"a", fin=False)
        + frame(0x0, b"b", fin=False) * 100,
        "fg03_fragments_over_message_limit": frame(0x2, bytes(300), fin=False)
        + frame(0x0, bytes(300), fin=False) * 4,
        "fg04_fragments_with_pings": frame(0x1, b"he", fin=False)
        + frame(0x9, b"p1")
        + frame(0x0, fin=False)
        + frame(0x9)
        + frame(0x0, b"llo"),
        "fg_fragmented_exact_limit_two_parts": frame(0x2, bytes(LIMIT // 2), fin=False)
        + frame(0x0, bytes(LIMIT // 2)),
        "cf01_ping_126": frame(0x9, bytes(126)),
        "cf01_ping_fin0": frame(0x9, b"x", fin=False),
        "cf01_close_fin0": frame(0x8, b"\x03\xe8", fin=False),
        "valid_ping_125": frame(0x9, bytes(125)),
        "cf03_unsolicited_pong": frame(0xA, b"hi"),
        "cf03_pong_125": frame(0xA, bytes(125)),
        "cl01_close_1_byte": frame(0x8, b"\x03"),
        "cl01_close_reason_not_utf8": close(1000, b"\xff\xfe"),
        "cl01_close_reason_124_bytes": close(1000, b"r" * 124),
        "cl_close_empty_body": frame(0x8),
        "cl_close_1000_bye": close(1000, b"bye"),
        "cl_close_3000": close(3000),
        "cl_close_4999": close(4999),
        "cl03_text_after_close": close(1000) + frame(0x1, b"late"),
        "ut01_c0af": frame(0x1, b"\xc0\xaf"),
        "ut01_surrogate_eda080": frame(0x1, b"\xed\xa0\x80"),
        "ut01_f4908080_over_max": frame(0x1, b"\xf4\x90\x80\x80"),
        "ut01_ff": frame(0x1, b"\xff"),
        "ut01_bad_first_fragment_then_more": frame(0x1, b"\xff", fin=False) + frame(0x0, b"ok"),
        "ut01_codepoint_split_2_fragments": frame(0x1, b"\xf0\x9f", fin=False)
        + frame(0x0, b"\x98\x80"),
        "ut01_codepoint_split_4_fragments": frame(0x1, b"\xf0", fin=False)
        + frame(0x0, b"\x9f", fin=False)
        + frame(0x0, b"\x98", fin=False)
        + frame(0x0, b"\x80"),
        "ut02_truncated_at_fin": frame(0x1, b"ok\xf0\x9f"),
        "truncated_header_one_byte": b"\x81",
        "truncated_mask": b"\x81\x85\x37\xfa",
        "truncated_payload": frame(0x1, b"hello")[:-2],
        "garbage_http_after_handshake": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for opcode in (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF):
        seeds[f"fr02_reserved_opcode_{opcode:x}"] = frame(opcode, b"x")
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        seeds[f"cl01_close_code_{code}"] = close(code)
    return seeds


REQUEST = (
    "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def request(extra: str = "", *, key: str = KEY, replace: tuple[str, str] | None = None) -> bytes:
    text = REQUEST.format(key=key, extra=extra)
    if replace is not None:
        text = text.replace(*replace)
    return text.encode("latin-1")


def offer(value: str) -> bytes:
    return request(f"Sec-WebSocket-Extensions: {value}\r\n")


def handshake_seeds() -> dict[str, bytes]:
    headers21 = "".join(f"X-H{i}: v\r\n" for i in range(16))  # 5 + 16 > max_headers
    return {
        "hs01_rfc_example": request(),
        "hs01_with_origin_and_protocol": request(
            "Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
        ),
        "hs02_missing_host": request(replace=("Host: server.example.com\r\n", "")),
        "hs02_missing_upgrade": request(replace=("Upgrade: websocket\r\n", "")),
        "hs02_connection_without_upgrade": request(
            replace=("Connection: Upgrade", "Connection: keep-alive")
        ),
        "hs02_missing_key": request(replace=(f"Sec-WebSocket-Key: {KEY}\r\n", "")),
        "hs02_key_15_bytes": request(key="AAAAAAAAAAAAAAAAAAAA"),
        "hs02_key_17_bytes": request(key="AAAAAAAAAAAAAAAAAAAAAAA="),
        "hs02_key_not_base64": request(key="not base64 at all!!!!!=="),
        "hs02_two_keys": request(f"Sec-WebSocket-Key: {KEY}\r\n"),
        "hs02_http_1_0": request(replace=("HTTP/1.1", "HTTP/1.0")),
        "hs02_post": request(replace=("GET ", "POST ")),
        "hs02_lowercase_get": request(replace=("GET ", "get ")),
        "hs03_version_8": request(replace=("Version: 13", "Version: 8")),
        "hs03_version_list": request(replace=("Version: 13", "Version: 13, 8")),
        "hs04_firefox_connection_and_case": request(
            replace=("Connection: Upgrade\r\nSec", "Connection: keep-alive, Upgrade\r\nSec")
        ).replace(b"Upgrade: websocket", b"upgrade: WebSocket"),
        "hs05_21_header_lines": request(headers21),
        "hs05_head_over_2kib": request("X-Big: " + "a" * 2100 + "\r\n"),
        "hs05_head_exactly_at_limit": request(
            "X-Pad: " + "a" * (2048 - len(request()) - 9) + "\r\n"
        ),
        "hs05_head_one_over_limit": request("X-Pad: " + "a" * (2049 - len(request()) - 9) + "\r\n"),
        "hs05_20_header_lines": request("".join(f"X-H{i}: v\r\n" for i in range(15))),
        "hs07_protocol_with_spaces": request("Sec-WebSocket-Protocol: b" + " " * 1500 + "x\r\n"),
        "hs07_protocol_300_tokens": request(
            "Sec-WebSocket-Protocol: " + ",".join(f"p{i}" for i in range(300)) + "\r\n"
        ),
        "hs09_plain_get": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "hs09_plain_get_http_1_0": b"GET / HTTP/1.0\r\n\r\n",
        "hs10_server_max_window_bits_8": offer("permessage-deflate; server_max_window_bits=8"),
        "hs10_server_max_window_bits_08": offer("permessage-deflate; server_max_window_bits=08"),
        "hs10_server_max_window_bits_16": offer("permessage-deflate; server_max_window_bits=16"),
        "hs10_duplicate_param": offer(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ),
        "hs10_unknown_param": offer("permessage-deflate; foo=bar"),
        "hs10_constructor": offer("constructor"),
        "hs10_100_offers_over_head_limit": offer(
            ", ".join(["permessage-deflate; client_max_window_bits"] * 100)
        ),
        "hs10_40_offers": offer(", ".join(["permessage-deflate; client_max_window_bits"] * 40)),
        "hs10_client_bits_without_value": offer("permessage-deflate; client_max_window_bits"),
        "hs10_quoted_value": offer('permessage-deflate; client_max_window_bits="10"'),
        "hs10_bad_then_good_offer": offer(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate"
        ),
        "hs10_empty_param_list": offer("permessage-deflate;;;"),
        "control_char_in_target": request(replace=("GET /chat", "GET /ch\x01at")),
        "bare_lf_line_endings": request().replace(b"\r\n", b"\n"),
        "absolute_form_target": request(
            replace=("GET /chat", "GET http://server.example.com/chat")
        ),
        "asterisk_target": request(replace=("GET /chat", "GET *")),
        "percent_encoded_invalid_utf8_path": request(replace=("GET /chat", "GET /%ff%fe")),
        "query_and_fragment": request(replace=("GET /chat", "GET /chat?a=1&b=%20#frag")),
        "header_without_colon": request("NoColonHere\r\n"),
        "space_before_colon": request("X-Bad : v\r\n"),
        "obs_fold_continuation": request("X-Folded: a\r\n  b\r\n"),
        "nul_in_header_value": request("X-Nul: a\x00b\r\n"),
        "non_ascii_header_value": request("X-Latin: caf\xe9\r\n"),
        "empty_request_line": b"\r\n" + request(),
        "http_2_0": request(replace=("HTTP/1.1", "HTTP/2.0")),
        "no_version": request(replace=(" HTTP/1.1", "")),
        "connect_method": b"CONNECT server.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        "upgrade_h2c": request(replace=("Upgrade: websocket", "Upgrade: h2c")),
        "ipv6_host_with_port": request(replace=("Host: server.example.com", "Host: [::1]:8080")),
        "pipelined_frame_after_head": request() + encode_frame(0x1, b"early", mask=M),
        "tl02_tls_client_hello": bytes.fromhex("16030100a5010000a10303")
        + bytes(32)
        + b"\x00\x00\x02\x13\x01\x01\x00",
        "binary_garbage": bytes(range(256)),
        "incomplete_head": request()[:-2],
    }


def deflate_client() -> tuple[Connection, Connection]:
    """A client and server with permessage-deflate negotiated (the test's profile)."""
    client = Connection(Side.CLIENT, limits=LIMITS, mask_source=fixed_mask, deflate=DEFLATE)
    server = Connection(Side.SERVER, limits=LIMITS, deflate=DEFLATE)
    client.connect("example.com", "/chat", key=KEY)
    server.receive_data(client.data_to_send())
    (req,) = server.events_received()
    server.accept(req)  # type: ignore[arg-type]
    client.receive_data(server.data_to_send())
    return client, server


def compressed(*messages: str | bytes) -> bytes:
    """The client's frames for ``messages`` (compressed, context takeover)."""
    client, _ = deflate_client()
    client.events_received()
    for message in messages:
        if isinstance(message, str):
            client.send_text(message, compress=True)
        else:
            client.send_binary(message, compress=True)
    return client.data_to_send()


def raw_deflate(data: bytes, *, wbits: int = -12, tail: bool = False) -> bytes:
    """``data`` as a raw DEFLATE stream, sync-flushed; the 00 00 ff ff tail kept if asked."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)
    return out if tail else out[:-4]


def deflate_seeds() -> dict[str, bytes]:
    ping = frame(0x9, b"p")
    full, half = raw_deflate(bytes(LIMIT)), raw_deflate(bytes(LIMIT // 2))
    hello_bfinal = bytes.fromhex("f248cdc9c90700")  # RFC 7692 §7.2.3.3 "Hello", BFINAL=1
    hello_bfinal_padded = bytes.fromhex("f348cdc9c9070000")  # §7.2.3.4, with padding
    return {
        "valid_text_hello": compressed("hello"),
        "valid_binary": compressed(bytes(range(200))),
        "valid_three_messages_context_takeover": compressed(
            "hello hello", "hello hello", "hello again"
        ),
        "valid_empty_message": compressed(""),
        "valid_uncompressed_on_deflate_connection": frame(0x1, b"plain"),
        "valid_fragmented_compressed": frame(0x1, half[:5], fin=False, rsv=0x40)
        + frame(0x0, half[5:]),
        "valid_fragmented_with_ping": frame(0x2, half[:3], fin=False, rsv=0x40)
        + ping
        + frame(0x0, half[3:]),
        "pd02_fragmented_exact_limit_pays_overhead": frame(0x1, full[:5], fin=False, rsv=0x40)
        + frame(0x0, full[5:]),
        "valid_tail_not_stripped": frame(0x1, raw_deflate(b"tail kept", tail=True), rsv=0x40),
        "valid_stored_block": frame(0x1, b"\x00\x05\x00\xfa\xffhello", rsv=0x40),
        "valid_bfinal_hello": frame(0x1, hello_bfinal, rsv=0x40),
        "valid_bfinal_hello_padded": frame(0x1, hello_bfinal_padded, rsv=0x40),
        "pd01_bomb_one_frame": frame(0x2, raw_deflate(bytes(1 << 20)), rsv=0x40),
        "pd01_bomb_in_fragments": b"".join(
            frame(0x0 if i else 0x2, part, fin=i == 9, rsv=0 if i else 0x40)
            for i, part in enumerate(_parts(raw_deflate(bytes(1 << 20)), 10))
        ),
        "pd02_inflates_to_exact_limit": frame(0x2, full, rsv=0x40),
        "pd02_inflates_to_limit_plus_1": frame(0x2, raw_deflate(bytes(LIMIT + 1)), rsv=0x40),
        "pd02_inflates_to_limit_plus_2": frame(0x2, raw_deflate(bytes(LIMIT + 2)), rsv=0x40),
        "pd02_inflates_to_limit_plus_32k": frame(0x2, raw_deflate(bytes(LIMIT + 32768)), rsv=0x40),
        "pd03_rsv1_on_ping": frame(0x9, b"", rsv=0x40),
        "pd03_rsv1_on_continuation": frame(0x1, full[:5], fin=False, rsv=0x40)
        + frame(0x0, full[5:], rsv=0x40),
        "pd03_rsv1_on_close": frame(0x8, b"\x03\xe8", rsv=0x40),
        "pd03_rsv2_on_data": frame(0x1, b"x", rsv=0x20),
        "pd04_corrupt_stream": frame(0x1, bytes(range(7, 200, 3)), rsv=0x40),
        "pd04_invalid_block_type_3": frame(0x1, b"\x07\x00", rsv=0x40),
        "pd04_bfinal_then_next_message": frame(0x1, hello_bfinal, rsv=0x40)
        + frame(0x1, raw_deflate(b"two"), rsv=0x40),
        "pd04_bfinal_then_same_again": frame(0x1, hello_bfinal, rsv=0x40) * 2,
        "pd04_trailing_bytes_after_final_block": frame(
            0x1, b"\xcb\x48\xcd\xc9\xc9\x07\x00\xff\xff\xff", rsv=0x40
        ),
        "pd04_distance_too_far_back": frame(
            0x1, raw_deflate(b"a" * 5000 + b"b" * 100 + b"a" * 5000, wbits=-15), rsv=0x40
        ),
        "pd04_window_15_message": frame(
            0x2, raw_deflate(bytes(range(256)) * 3, wbits=-15), rsv=0x40
        ),
        "inflates_to_invalid_utf8": frame(0x1, raw_deflate(b"\xff\xfe"), rsv=0x40),
        "inflates_to_split_codepoint_at_fin": frame(0x1, raw_deflate(b"ok\xf0\x9f"), rsv=0x40),
        "empty_compressed_payload": frame(0x1, b"", rsv=0x40),
        "compressed_single_zero_byte": frame(0x1, b"\x00", rsv=0x40),
        "continuation_first_compressed": frame(0x0, full, rsv=0x40),
        "unmasked_compressed": encode_frame(0x1, raw_deflate(b"hi"), rsv=0x40),
        "compressed_then_uncompressed_then_compressed": compressed("first message!")
        + frame(0x1, b"plain")
        + frame(0x1, raw_deflate(b"third"), rsv=0x40),
        "fragment_flood_compressed": frame(0x1, full[:2], fin=False, rsv=0x40)
        + frame(0x0, fin=False) * 80,
    }


def _parts(data: bytes, count: int) -> list[bytes]:
    step = -(-len(data) // count)
    return [data[i * step : (i + 1) * step] for i in range(count)]


def json_seeds() -> dict[str, bytes]:
    seeds = {
        "valid_echo_with_id": '{"event":"echo","data":1,"id":1}',
        "valid_echo_without_id": '{"event":"echo","data":[1,2,3]}',
        "valid_echo_string_id": '{"event":"echo","data":{"a":null},"id":"req-1"}',
        "valid_quiet_with_id": '{"event":"quiet","id":7}',
        "valid_echo_huge_int_id": '{"event":"echo","data":0,"id":123456789012345678901234567890}',
        "valid_echo_float_id": '{"event":"echo","data":0,"id":1.5}',
        "valid_echo_null_id": '{"event":"echo","data":0,"id":null}',
        "valid_echo_object_id": '{"event":"echo","data":0,"id":{"nested":[1]}}',
        "valid_echo_unicode": '{"event":"echo","data":"h\\u00e9llo \\ud83d\\ude00","id":2}',
        "handler_raises": '{"event":"boom","data":1,"id":3}',
        "handler_raises_without_id": '{"event":"boom"}',
        "unknown_event": '{"event":"nope","id":4}',
        "empty_event_name": '{"event":"","id":5}',
        "lifecycle_connect": '{"event":"connect","id":6}',
        "lifecycle_disconnect": '{"event":"disconnect"}',
        "lifecycle_message": '{"event":"message","data":"x"}',
        "event_number": '{"event":1,"id":8}',
        "event_null": '{"event":null}',
        "event_list": '{"event":["echo"]}',
        "missing_event": '{"data":1,"id":9}',
        "top_level_array": '["echo",1]',
        "top_level_string": '"echo"',
        "top_level_number": "42",
        "top_level_null": "null",
        "empty_message": "",
        "whitespace_only": " \t\r\n",
        "truncated_object": '{"event":"echo"',
        "trailing_garbage": '{"event":"echo","id":10} trailing',
        "duplicate_keys": '{"event":"boom","event":"echo","id":11}',
        "nested_5000_arrays": "[" * 5000,
        "nested_5000_objects": '{"a":' * 5000,
        "deep_data_5000": '{"event":"echo","id":12,"data":' + "[" * 5000 + "]" * 5000 + "}",
        "number_5000_digits": '{"event":"echo","id":13,"data":' + "7" * 5000 + "}",
        "nan_and_infinity": '{"event":"echo","id":14,"data":[NaN,Infinity,-Infinity]}',
        "lone_surrogate_escape": '{"event":"\\ud800","id":15}',
        "event_name_2kib": '{"event":"' + "e" * 2048 + '","id":16}',
        "id_string_2kib": '{"event":"nope","id":"' + "i" * 2048 + '"}',
        "bom_prefix": '\ufeff{"event":"echo","id":17}',
        "control_characters_in_string": '{"event":"echo\x01","id":18}',
        "single_quotes": "{'event':'echo'}",
        "json_comment": '{"event":"echo" /* c */,"id":19}',
    }
    return {name: text.encode("utf-8") for name, text in seeds.items()} | {
        "invalid_utf8_bytes": b'{"event":"\xff\xfe","id":20}'
    }


def main() -> None:
    for target, seeds in (
        ("frames", frames_seeds()),
        ("handshake", handshake_seeds()),
        ("deflate", deflate_seeds()),
        ("json", json_seeds()),
    ):
        folder = HERE / target
        folder.mkdir(exist_ok=True)
        for name, data in seeds.items():
            (folder / f"{name}.bin").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
