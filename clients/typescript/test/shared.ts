import * as fs from "node:fs";
import * as path from "node:path";

// dist/test -> the package -> clients/shared
export const SHARED = JSON.parse(fs.readFileSync(path.resolve(__dirname, "../../../shared/settle_cases.json"), "utf8"));
