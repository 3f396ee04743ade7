// Sends one record to the gateway with java.net.http.HttpClient, the client identity loaded from
// a PKCS#12 bundle (as `certs init` writes them); prints the status, any Retry-After, then the
// answer. Java 11 or later, no build step:
//
//   GATEWAY_URL=https://localhost:8443/v1/records GATEWAY_CA=gateway-ca.pem \
//   CLIENT_P12=orgs/sz-....p12 CLIENT_P12_PASSWORD_FILE=orgs/sz-....p12.pass \
//     java Client.java RECORD.json
//
// Without CLIENT_P12 it connects without a client certificate (the gateway refuses that in the
// TLS handshake). Exits 0 whenever an answer came back, 2 when none did.

import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Client {
    public static void main(String[] args) throws Exception {
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(identity(), trust(System.getenv("GATEWAY_CA")).getTrustManagers(), null);
        // HTTP/2 when the gateway offers it (it does), HTTP/1.1 otherwise.
        HttpClient client = HttpClient.newBuilder()
                .sslContext(tls)
                .connectTimeout(Duration.ofSeconds(10))
                .build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(System.getenv("GATEWAY_URL")))
                .timeout(Duration.ofSeconds(60))
                .header("content-type", "application/json")
                // The file's bytes as they are: a retry of the same file is the same record.
                .POST(HttpRequest.BodyPublishers.ofFile(Path.of(args[0])))
                .build();
        HttpResponse<String> answer;
        try {
            answer = client.send(request, HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            System.err.println("error: " + e);
            System.exit(2);
            return;
        }
        System.out.println("status: " + answer.statusCode());
        answer.headers().firstValue("retry-after").ifPresent(v -> System.out.println("retry-after: " + v));
        System.out.println();
        System.out.println(answer.body());
    }

    /** The client certificate and key from the PKCS#12 bundle, or none. */
    static KeyManager[] identity() throws Exception {
        String bundle = System.getenv("CLIENT_P12");
        if (bundle == null || bundle.isEmpty()) {
            return null;
        }
        // The password file holds the password on one line.
        char[] password = Files.readString(Path.of(System.getenv("CLIENT_P12_PASSWORD_FILE")))
                .strip().toCharArray();
        KeyStore store = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(Path.of(bundle))) {
            store.load(in, password);
        }
        KeyManagerFactory keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        keys.init(store, password);
        return keys.getKeyManagers();
    }

    /** Trusts only the CA that issued the gateway's certificate (a PEM file). */
    static TrustManagerFactory trust(String caFile) throws Exception {
        KeyStore roots = KeyStore.getInstance(KeyStore.getDefaultType());
        roots.load(null, null);
        try (InputStream in = Files.newInputStream(Path.of(caFile))) {
            roots.setCertificateEntry("gateway-ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(roots);
        return trust;
    }
}
