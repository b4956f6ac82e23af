package kcpep.bench;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayInputStream;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;
import org.keycloak.AuthorizationContext;
import org.keycloak.adapters.authorization.PolicyEnforcer;
import org.keycloak.adapters.authorization.TokenPrincipal;
import org.keycloak.adapters.authorization.spi.HttpRequest;
import org.keycloak.adapters.authorization.spi.HttpResponse;

/**
 * Keycloak's policy enforcer behind the JDK's HTTP server, answering "ok" when it grants: what a
 * Java service protected by Keycloak's own enforcer pays per request. As in Keycloak's servlet
 * integrations, the bearer token is the principal (the container would have verified it).
 *
 * Usage: JavaEnforcer PORT AUTH_SERVER_URL REALM CLIENT_ID SECRET POLICY_ENFORCER_JSON_FILE
 */
public final class JavaEnforcer {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        PolicyEnforcer enforcer = PolicyEnforcer.builder()
                .authServerUrl(args[1])
                .realm(args[2])
                .clientId(args[3])
                .credentials(Map.of("secret", args[4]))
                .bearerOnly(true)
                .enforcerConfig(Files.newInputStream(Path.of(args[5])))
                .build();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 256);
        server.setExecutor(Executors.newFixedThreadPool(32));
        server.createContext("/", exchange -> {
            try (exchange) {
                int[] status = {200};
                HttpResponse response = new HttpResponse() {
                    public void sendError(int code) { status[0] = code; }
                    public void sendError(int code, String message) { status[0] = code; }
                    public void setHeader(String name, String value) { exchange.getResponseHeaders().set(name, value); }
                };
                AuthorizationContext context = enforcer.enforce(new Request(exchange), response);
                int code = context.isGranted() ? 200 : (status[0] == 200 ? 403 : status[0]);
                byte[] body = (code == 200 ? "ok" : "denied").getBytes(StandardCharsets.UTF_8);
                exchange.sendResponseHeaders(code, body.length);
                exchange.getResponseBody().write(body);
            } catch (Exception e) {
                exchange.sendResponseHeaders(500, -1);
            }
        });
        server.start();
        System.out.println("java enforcer on 127.0.0.1:" + port);
    }

    private static final class Request implements HttpRequest {
        private final HttpExchange exchange;

        Request(HttpExchange exchange) { this.exchange = exchange; }

        public String getRelativePath() { return exchange.getRequestURI().getRawPath(); }
        public String getMethod() { return exchange.getRequestMethod(); }
        public String getURI() { return exchange.getRequestURI().toString(); }
        public List<String> getHeaders(String name) {
            List<String> v = exchange.getRequestHeaders().get(name);
            return v == null ? new ArrayList<>() : v;
        }
        public String getFirstParam(String name) { return null; }
        public String getCookieValue(String name) { return null; }
        public String getRemoteAddr() { return exchange.getRemoteAddress().getAddress().getHostAddress(); }
        public boolean isSecure() { return false; }
        public String getHeader(String name) { return exchange.getRequestHeaders().getFirst(name); }
        public InputStream getInputStream(boolean buffered) { return new ByteArrayInputStream(new byte[0]); }
        public TokenPrincipal getPrincipal() {
            String auth = getHeader("Authorization");
            if (auth == null || !auth.regionMatches(true, 0, "Bearer ", 0, 7)) {
                return null;
            }
            String raw = auth.substring(7).trim();
            return () -> raw;
        }
    }
}
