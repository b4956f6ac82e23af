#!/usr/bin/env python3
"""The realm's JavaScript policies as a Keycloak provider jar (Python 3 standard library only).

    policies-jar.py SRC_DIR OUT_JAR      e.g. envoy/keycloak/policies dist/kcpep-policies.jar

The jar is a zip of SRC_DIR (the .js files and META-INF/keycloak-scripts.json), no compilation.
The bytes depend only on the files' names and contents (sorted entries, a fixed date), and OUT_JAR is
rewritten only when they change, so a Keycloak whose providers/ holds it does not rebuild itself on
every start. Used by scripts/stack.sh (into the native Keycloak's providers/) and by
`make policies-jar` (dist/kcpep-policies.jar, which envoy/docker-compose.yaml mounts).
"""
import io
import os
import sys
import zipfile


def jar_bytes(src):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for root, _, files in sorted(os.walk(src)):
            for f in sorted(files):
                path = os.path.join(root, f)
                info = zipfile.ZipInfo(os.path.relpath(path, src), date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as fh:
                    z.writestr(info, fh.read())
    return buf.getvalue()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: policies-jar.py SRC_DIR OUT_JAR")
    src, out = sys.argv[1], sys.argv[2]
    if not os.path.isfile(os.path.join(src, "META-INF", "keycloak-scripts.json")):
        sys.exit(f"policies-jar.py: {src} has no META-INF/keycloak-scripts.json")
    data = jar_bytes(src)
    if os.path.exists(out):
        with open(out, "rb") as fh:
            if fh.read() == data:
                return
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
