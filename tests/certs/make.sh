#!/bin/sh
# Test certificates for the TLS tests (not secrets: never use them outside tests).
# A CA, a server certificate for localhost / 127.0.0.1 / ::1 and a client certificate,
# both signed by the CA, valid for 100 years. Re-run to make new ones: openssl 3.
set -eu
cd "$(dirname "$0")"
days=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=reactor test CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=reactor test $who" -keyout $who.key -out $who.csr
done
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for who in server client; do
    openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days $days \
        -extfile $who.ext -out $who.pem
done
rm -f server.csr client.csr server.ext client.ext ca.srl
