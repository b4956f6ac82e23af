package kcpep.oracle;

import java.io.BufferedReader;
import java.lang.reflect.Method;
import java.net.URI;
import java.net.URISyntaxException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

import org.keycloak.common.util.PathMatcher;

/**
 * Which configured pattern Keycloak's enforcer matches for each request path.
 * Input: groups separated by an empty line; in each, the patterns, a line "--", the paths.
 * Output: for each path of each group, one line: the index of the matched pattern, or -1, then a
 * tab and the path the matcher normalized it to ("-" when this PathMatcher does not normalize,
 * "null" when it refuses the path).
 *
 * With the argument "gen2" (on keycloak-common 26.7.3, which normalizes as keycloak-client's
 * first fix did): the path is normalized as Keycloak's main branch does since its second fix
 * (keycloak#52843, not yet on Maven Central): 26.7.3's normalizeUri, then matrix parameters
 * stripped again, "//" collapsed again and java.net.URI's normalize once more (a decoded %3B or
 * %2E%2E counts), and the matcher is handed that path without normalizing it again.
 */
public final class PathOracle {
    private static class Matcher extends PathMatcher<String> {
        private final List<String> patterns;

        Matcher(List<String> patterns) {
            this.patterns = patterns;
        }

        @Override
        protected String getPath(String entry) {
            return entry;
        }

        @Override
        protected Collection<String> getPaths() {
            return patterns;
        }
    }

    /** Matches the path it is given as it is (the caller normalized it). */
    private static final class PreNormalized extends Matcher {
        PreNormalized(List<String> patterns) {
            super(patterns);
        }

        // overrides PathMatcher.normalizeUri where it exists (26.7 and later)
        protected String normalizeUri(String uri) {
            return uri;
        }
    }

    private static String stripMatrix(String s) {
        StringBuilder sb = new StringBuilder(s.length());
        boolean inMatrix = false;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == ';') {
                inMatrix = true;
            } else if (c == '/') {
                inMatrix = false;
                sb.append(c);
            } else if (!inMatrix) {
                sb.append(c);
            }
        }
        return sb.toString();
    }

    private static String collapse(String s) {
        while (s.contains("//")) {
            s = s.replace("//", "/");
        }
        return s;
    }

    /** Keycloak main's normalization: 26.7.3's, then the second pass of keycloak#52843. */
    private static String gen2(Method normalize, Matcher plain, String p) throws Exception {
        String n = (String) normalize.invoke(plain, p);
        if (n == null) {
            return null;
        }
        n = collapse(stripMatrix(n));
        try {
            n = new URI(null, null, n, null).normalize().getPath();
        } catch (URISyntaxException e) {
            return null;
        }
        if (n == null) {
            return null;
        }
        n = collapse(n);
        if (n.length() > 1 && n.endsWith("/")) {
            n = n.substring(0, n.length() - 1);
        }
        return n;
    }

    /** The newest PathMatcher's protected normalizeUri, when this version has it. */
    private static Method normalizer() {
        try {
            Method m = PathMatcher.class.getDeclaredMethod("normalizeUri", String.class);
            m.setAccessible(true);
            return m;
        } catch (NoSuchMethodException e) {
            return null;
        }
    }

    public static void main(String[] args) throws Exception {
        Method normalize = normalizer();
        boolean gen2 = args.length > 0 && args[0].equals("gen2");
        if (gen2 && normalize == null) {
            throw new IllegalStateException("gen2 needs a PathMatcher with normalizeUri (26.7 or later)");
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        List<String> patterns = new ArrayList<>();
        List<String> paths = new ArrayList<>();
        boolean inPaths = false;
        StringBuilder out = new StringBuilder();
        for (String line = in.readLine(); ; line = in.readLine()) {
            if (line == null || line.isEmpty()) {
                // identity, not equals: the same pattern text twice is two entries
                Matcher m = new Matcher(patterns);
                PreNormalized pre = new PreNormalized(patterns);
                for (String p : paths) {
                    String hit;
                    String normalized = null;
                    try {
                        if (gen2) {
                            normalized = gen2(normalize, m, p);
                            hit = normalized == null ? null : pre.matches(normalized);
                        } else {
                            hit = m.matches(p);
                        }
                    } catch (RuntimeException e) {
                        out.append("error ").append(e.getClass().getSimpleName()).append('\n');
                        continue;
                    }
                    int index = -1;
                    for (int i = 0; i < patterns.size(); i++) {
                        if (patterns.get(i) == hit) {
                            index = i;
                        }
                    }
                    out.append(index).append('\t');
                    if (gen2) {
                        out.append(normalized == null ? "null" : normalized);
                    } else if (normalize == null) {
                        out.append('-');
                    } else {
                        Object n = normalize.invoke(m, p);
                        out.append(n == null ? "null" : n.toString());
                    }
                    out.append('\n');
                }
                patterns = new ArrayList<>();
                paths = new ArrayList<>();
                inPaths = false;
                if (line == null) {
                    break;
                }
            } else if (line.equals("--")) {
                inPaths = true;
            } else if (inPaths) {
                paths.add(line);
            } else {
                patterns.add(new String(line));
            }
        }
        System.out.print(out);
    }
}
