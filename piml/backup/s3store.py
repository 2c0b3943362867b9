"""The few S3 calls the scheduled backup makes (put, list a prefix, get, delete), signed with
AWS Signature Version 4 and addressed path-style (https://ENDPOINT/BUCKET/KEY), which AWS, MinIO, Garage and
Ceph all take. Standard library only: it runs in MLflow's image, which has no boto3 (piml/backup/scheduled.py
ships it beside itself). Every call is bounded by `timeout`; an error names the call and what S3 answered, never
a key or a signature."""

import datetime
import hashlib
import hmac
import http.client
import time
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SINGLE_PUT = 5 * 1024**3  # S3 takes at most 5 GiB in one PUT
MAX_LIST_PAGES = 100  # 100,000 keys: far more than `keep` archives


class S3Error(Exception):
    pass


def parse_uri(uri):
    """s3://BUCKET[/PREFIX] -> (bucket, prefix ending in '/' or empty)."""
    rest = uri[len("s3://") :] if uri.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} is not an s3://BUCKET[/PREFIX] URI")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


class Bucket:
    def __init__(self, endpoint, bucket, region, access_key, secret_key, timeout=120.0):
        region = region or "us-east-1"
        endpoint = endpoint or f"https://s3.{region}.amazonaws.com"
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{endpoint!r} is not an http(s)://HOST[:PORT] endpoint")
        self.scheme, self.host = parts.scheme, parts.netloc.rpartition("@")[2].lower()
        self.bucket, self.region, self.timeout = bucket, region, timeout
        self._access_key, self._secret_key = access_key, secret_key

    def put_file(self, key, path, sha256_hex, size):
        if size > MAX_SINGLE_PUT:
            raise S3Error(f"PUT {key}: {size} bytes is over the 5 GiB S3 takes in one upload")
        with open(path, "rb") as body:
            self._call("PUT", key, body=body, size=size, payload_sha256=sha256_hex)

    def put_bytes(self, key, data):
        self._call("PUT", key, body=data, size=len(data), payload_sha256=hashlib.sha256(data).hexdigest())

    def delete(self, key):
        self._call("DELETE", key)

    def get(self, key, sink=None, deadline=None):
        """The object's bytes, or (with `sink`, a binary file) streamed into it, by `deadline` (time.monotonic())."""
        return self._call("GET", key, sink=sink, deadline=deadline)

    def list(self, prefix):
        """Every key under `prefix` (ListObjectsV2, page by page)."""
        keys, token = [], None
        for _ in range(MAX_LIST_PAGES):
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            answer = self._call("GET", "", query=query)
            try:
                root = ET.fromstring(answer)
            except ET.ParseError:
                raise S3Error(
                    f"listing s3://{self.bucket}/{prefix}: the answer is not S3's XML: {answer[:80]!r}"
                ) from None
            keys += [el.text or "" for el in root.iter() if _tag(el) == "Key"]
            found = {_tag(el): el.text for el in root if _tag(el) in ("IsTruncated", "NextContinuationToken")}
            if found.get("IsTruncated") != "true" or not found.get("NextContinuationToken"):
                return keys
            token = found["NextContinuationToken"]
        raise S3Error(f"listing {prefix!r}: more than {MAX_LIST_PAGES} pages")

    # -- one signed request ---------------------------------------------------------------------------------------
    def _call(self, method, key, query=None, body=b"", size=0, payload_sha256=EMPTY_SHA256, sink=None, deadline=None):
        path = "/" + urllib.parse.quote(self.bucket + ("/" + key if key else ""), safe="/~")
        query_text = "&".join(
            f"{urllib.parse.quote(k, safe='~')}={urllib.parse.quote(v, safe='~')}"
            for k, v in sorted((query or {}).items())
        )
        headers = self._signed_headers(method, path, query_text, payload_sha256)
        headers["Content-Length"] = str(size)
        what = f"{method} s3://{self.bucket}/{key}"
        connection_class = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(self.host, timeout=self.timeout)
        try:
            connection.request(method, path + ("?" + query_text if query_text else ""), body=body, headers=headers)
            response = connection.getresponse()
            if sink is not None and response.status < 300:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    sink.write(chunk)
                    if deadline is not None and time.monotonic() > deadline:
                        raise S3Error(f"{what}: not whole within its time (a slow link: give it more time)")
                return b""
            answer = response.read()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise S3Error(f"{what}: {self.scheme}://{self.host} did not answer: {exc or type(exc).__name__}") from None
        finally:
            connection.close()
        if response.status >= 300:
            raise S3Error(f"{what}: HTTP {response.status} {_error_of(answer)}".rstrip())
        return answer

    def _signed_headers(self, method, path, query_text, payload_sha256):
        now = datetime.datetime.now(datetime.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"host": self.host, "x-amz-content-sha256": payload_sha256, "x-amz-date": stamp}
        names = ";".join(sorted(headers))
        canonical = "\n".join(
            [method, path, query_text, "".join(f"{n}:{headers[n]}\n" for n in sorted(headers)), names, payload_sha256]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signing_key = ("AWS4" + self._secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
        )
        return headers


def _tag(element):
    return element.tag.rpartition("}")[2]


def _error_of(answer):
    """S3's <Error><Code>..</Code><Message>..</Message></Error> as one line (a HEAD or a proxy may send none)."""
    try:
        root = ET.fromstring(answer)
    except ET.ParseError:
        return answer[:120].decode(errors="replace").replace("\n", " ")
    found = {_tag(el): (el.text or "") for el in root if _tag(el) in ("Code", "Message")}
    return f"{found.get('Code', '')}: {found.get('Message', '')}".strip(": ")[:300]
