// Sends one record to the gateway with Go's net/http; prints the status, any Retry-After, then
// the answer. Standard library only:
//
//	GATEWAY_URL=https://localhost:8443/v1/records GATEWAY_CA=gateway-ca.pem \
//	CLIENT_CERT=orgs/sz-....pem CLIENT_KEY=orgs/sz-....key \
//	  go run main.go RECORD.json
//
// Without CLIENT_CERT it connects without a client certificate (the gateway refuses that in the
// TLS handshake). Exits 0 whenever an answer came back, 2 when none did.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fail("usage: go run main.go RECORD.json")
	}
	caPEM, err := os.ReadFile(os.Getenv("GATEWAY_CA"))
	if err != nil {
		fail(err.Error())
	}
	// Trusts only the CA that issued the gateway's certificate.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		fail("GATEWAY_CA holds no PEM certificate")
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile := os.Getenv("CLIENT_CERT"); certFile != "" {
		identity, err := tls.LoadX509KeyPair(certFile, os.Getenv("CLIENT_KEY"))
		if err != nil {
			fail(err.Error())
		}
		config.Certificates = []tls.Certificate{identity}
	}
	// The file's bytes as they are: a retry of the same file is the same record.
	record, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err.Error())
	}
	client := &http.Client{
		Timeout: 60 * time.Second,
		// A custom TLS config turns HTTP/2 off unless asked for.
		Transport: &http.Transport{TLSClientConfig: config, ForceAttemptHTTP2: true},
	}
	answer, err := client.Post(os.Getenv("GATEWAY_URL"), "application/json", bytes.NewReader(record))
	if err != nil {
		fail(err.Error())
	}
	defer answer.Body.Close()
	body, err := io.ReadAll(answer.Body)
	if err != nil {
		fail(err.Error())
	}
	fmt.Printf("status: %d\n", answer.StatusCode)
	if v := answer.Header.Get("Retry-After"); v != "" {
		fmt.Printf("retry-after: %s\n", v)
	}
	fmt.Printf("\n%s\n", body)
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "error:", message)
	os.Exit(2)
}
