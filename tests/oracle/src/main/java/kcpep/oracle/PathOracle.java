package kcpep.oracle;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

import org.keycloak.common.util.PathMatcher;

/**
 * Which configured pattern Keycloak's enforcer matches for each request path.
 * Input: groups separated by an empty line; in each, the patterns, a line "--", the paths.
 * Output: for each path of each group, one line: the index of the matched pattern, or -1.
 */
public final class PathOracle {
    private static final class Matcher extends PathMatcher<String> {
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

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        List<String> patterns = new ArrayList<>();
        List<String> paths = new ArrayList<>();
        boolean inPaths = false;
        StringBuilder out = new StringBuilder();
        for (String line = in.readLine(); ; line = in.readLine()) {
            if (line == null || line.isEmpty()) {
                // identity, not equals: the same pattern text twice is two entries
                Matcher m = new Matcher(patterns);
                for (String p : paths) {
                    String hit;
                    try {
                        hit = m.matches(p);
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
                    out.append(index).append('\n');
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
